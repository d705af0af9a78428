/*
 * init.c — registration of every .Call entry point with its exact arity.
 * Dynamic symbol lookup is off and symbols are forced, so R code reaches the
 * routines only as C_<name> objects (NAMESPACE: .fixes = "C_").
 */
#include "vbayes.h"
#include <R_ext/Rdynload.h>

/* glm_model.c, glm_cavi.c, glm_jj.c */
SEXP C_glm_cavi(SEXP model, SEXP init, SEXP blocks, SEXP control);
SEXP C_glm_elbo(SEXP model, SEXP mu, SEXP Sigma, SEXP tau);
SEXP C_glm_log_joint(SEXP model, SEXP theta);
SEXP C_glm_jj(SEXP model, SEXP control);
SEXP C_binomial_mean(SEXP m, SEXP v, SEXP gh);
SEXP C_design_scan(SEXP X, SEXP w, SEXP cls);
SEXP C_centre_design(SEXP X, SEXP centre);
SEXP C_glm_response(SEXP y, SEXP w, SEXP off, SEXP fam);
SEXP C_class_ranges(SEXP u, SEXP cls);

/* spikes.c */
SEXP C_spikes_history(SEXP x, SEXP basis, SEXP seg, SEXP first_lag);
SEXP C_spikes_simulate(SEXP eta0, SEXP h, SEXP seg, SEXP control);

/* btd.c */
SEXP C_btd_solve(SEXP D, SEXP L, SEXP b);

/* lds_estep.c, lds_mstep.c */
SEXP C_lds_estep(SEXP y, SEXP off, SEXP family, SEXP params, SEXP state, SEXP approx, SEXP control);
SEXP C_lds_poisson_mstep(SEXP y, SEXP off, SEXP m, SEXP S, SEXP C, SEXP dvec, SEXP control);

/* sgvb.c (targets in sgvb_targets.c) */
SEXP C_sgvb_fit(SEXP model, SEXP mu0, SEXP L0, SEXP pre, SEXP control, SEXP opts);
SEXP C_sgvb_grad(SEXP model, SEXP mu, SEXP L, SEXP control);
SEXP C_sgvb_glm_start(SEXP model, SEXP theta0);
/* predictive.c */
SEXP C_pc_fit(SEXP y, SEXP model, SEXP control, SEXP holder);

/* amortized.c (network in mlp.c) */
SEXP C_amortized_fit(SEXP model, SEXP theta, SEXP control);
SEXP C_amortized_eval(SEXP model, SEXP theta, SEXP opts);
SEXP C_amortized_refine(SEXP model, SEXP theta, SEXP q, SEXP control);
SEXP C_amortized_encode(SEXP enc, SEXP theta, SEXP y);

/* util.c: a jump a progress handler asked for, resumed after the engine returned */
SEXP C_vb_resume_unwind(SEXP status);

/* glmm_cavi.c (model: glmm_model.c) */
SEXP C_glmm_cavi(SEXP model, SEXP init, SEXP control);

/* clang-format off */
#define CALLDEF(name, n) {#name, (DL_FUNC)&C_##name, n}

static const R_CallMethodDef call_methods[] = {
    CALLDEF(glm_cavi, 4),
    CALLDEF(glm_elbo, 4),
    CALLDEF(glm_log_joint, 2),
    CALLDEF(glm_jj, 2),
    CALLDEF(binomial_mean, 3),
    CALLDEF(design_scan, 3),
    CALLDEF(centre_design, 2),
    CALLDEF(glm_response, 4),
    CALLDEF(class_ranges, 2),
    CALLDEF(spikes_history, 4),
    CALLDEF(spikes_simulate, 4),
    CALLDEF(btd_solve, 3),
    CALLDEF(lds_estep, 7),
    CALLDEF(lds_poisson_mstep, 7),
    CALLDEF(sgvb_fit, 6),
    CALLDEF(sgvb_grad, 4),
    CALLDEF(sgvb_glm_start, 2),
    CALLDEF(pc_fit, 4),
    CALLDEF(amortized_fit, 3),
    CALLDEF(amortized_eval, 3),
    CALLDEF(amortized_refine, 4),
    CALLDEF(amortized_encode, 3),
    CALLDEF(vb_resume_unwind, 1),
    CALLDEF(glmm_cavi, 3),
    {NULL, NULL, 0}};
/* clang-format on */

void R_init_vbayes(DllInfo *dll) {
    R_registerRoutines(dll, NULL, call_methods, NULL, NULL);
    R_useDynamicSymbols(dll, FALSE);
    R_forceSymbols(dll, TRUE);
}
