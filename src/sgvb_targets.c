/*
 * sgvb_targets.c — the log joints the SGVB engine (sgvb.c) fits, each behind
 * the vb_log_joint contract (vbayes.h): f(theta, grad, model) returns
 * log p(y, theta) and, when grad != NULL, writes its gradient.
 *
 * Targets (model list -> vb_target):
 *   list(type = "glm", glm = <GLM model list>)   a GLM (glm.c's log joint):
 *       theta = beta, and log tau for gaussian; cost O(n p) per evaluation.
 *   list(type = "gauss", m = <d>, A = <d x d>)   f = -1/2 (theta - m)' A (theta - m),
 *       a test target whose optimal q and ELBO are known in closed form; O(d^2).
 *   list(type = "r", fn = <function(theta, grad)>, d = <int>)   a user's log density
 *       (vb_density()).  fn returns a double vector: c(f) or, when grad is TRUE and
 *       f is finite, c(f, gradient); or an error/interrupt condition, never an error
 *       itself (R/sgvb.R wraps the user's functions in tryCatch and checks their
 *       values there, where the messages are written).  The call is evaluated inside
 *       R_ToplevelExec, so even an R error that escapes the wrapper (e.g. memory)
 *       cannot longjmp through the engine: the target then sets its status, keeps
 *       the condition in holder[0], and the entry point restores the RNG and
 *       returns it to R, which re-raises it.
 */
#include "vbayes.h"

/* ---------------------------------------------------- Gaussian target -- */

typedef struct {
    int d;
    const double *m, *A;
    double *r; /* scratch, d */
} gauss_target;

static double gauss_log_joint(const double *theta, double *grad, void *model) {
    gauss_target *T = (gauss_target *)model;
    int d = T->d;
    double f = 0;
    for (int i = 0; i < d; i++)
        T->r[i] = theta[i] - T->m[i];
    for (int i = 0; i < d; i++) {
        double Ar = 0;
        for (int k = 0; k < d; k++)
            Ar += T->A[i + (size_t)k * d] * T->r[k];
        f -= 0.5 * T->r[i] * Ar;
        if (grad) grad[i] = -Ar;
    }
    return f;
}

/* ---------------------------------------------------- the R closure -- */

typedef struct {
    int d;
    SEXP fn;     /* function(theta, grad), protected by the caller's model list */
    SEXP holder; /* VECSXP: [0] the failure condition, [1] the last value     */
    const double *theta;
    int want_grad;
    int status;
} r_target;

/* Evaluated under R_ToplevelExec: any R error unwinds to it, not past the engine. */
static void r_eval(void *data) {
    r_target *T = (r_target *)data;
    SEXP th = PROTECT(Rf_allocVector(REALSXP, T->d));
    memcpy(REAL(th), T->theta, sizeof(double) * T->d);
    SEXP g = PROTECT(Rf_ScalarLogical(T->want_grad));
    SEXP call = PROTECT(Rf_lang3(T->fn, th, g));
    SET_VECTOR_ELT(T->holder, 1, Rf_eval(call, R_GlobalEnv));
    UNPROTECT(3);
}

static int inherits(SEXP x, const char *cls) {
    SEXP k = Rf_getAttrib(x, R_ClassSymbol);
    if (TYPEOF(k) != STRSXP) return 0;
    for (R_xlen_t i = 0; i < Rf_xlength(k); i++)
        if (strcmp(CHAR(STRING_ELT(k, i)), cls) == 0) return 1;
    return 0;
}

static double r_log_joint(const double *theta, double *grad, void *model) {
    r_target *T = (r_target *)model;
    int d = T->d;
    if (T->status != VB_OK) return R_NaN;
    T->theta = theta;
    T->want_grad = grad != NULL;
    SET_VECTOR_ELT(T->holder, 1, R_NilValue);
    if (!R_ToplevelExec(r_eval, T)) {
        /* an error the R wrapper did not catch (its message was printed) */
        T->status = VB_BAD_INPUT;
        return R_NaN;
    }
    SEXP v = VECTOR_ELT(T->holder, 1);
    if (inherits(v, "condition")) {
        SET_VECTOR_ELT(T->holder, 0, v);
        T->status = inherits(v, "interrupt") ? VB_INTERRUPTED : VB_BAD_INPUT;
        return R_NaN;
    }
    R_xlen_t len = Rf_xlength(v);
    if (TYPEOF(v) != REALSXP || (len != 1 && (!grad || len != 1 + (R_xlen_t)d))) {
        T->status = VB_BAD_INPUT; /* the wrapper's contract was broken */
        return R_NaN;
    }
    double f = REAL(v)[0];
    if (grad) {
        if (len == 1 + (R_xlen_t)d)
            memcpy(grad, REAL(v) + 1, sizeof(double) * d);
        else /* f non-finite: no gradient, the engine skips the draw */
            for (int i = 0; i < d; i++)
                grad[i] = R_NaN;
        if (len == 1 && R_FINITE(f)) {
            T->status = VB_BAD_INPUT;
            return R_NaN;
        }
    }
    return f;
}

/* --------------------------------------------------------- GLM target -- */

static void glm_setup(SEXP model, vb_target *T) {
    vb_glm *M = (vb_glm *)R_alloc(1, sizeof(vb_glm));
    vb_glm_unpack(vb_elt_req(model, "glm", "model"), M);
    M->eta = (double *)R_alloc((size_t)M->n + 1, sizeof(double));
    T->d = M->p + (M->family == VB_GAUSSIAN);
    if (T->d < 1) Rf_error("the SGVB GLM target needs at least one parameter");
    T->f = vb_glm_log_joint;
    T->model = M;
}

static void gauss_setup(SEXP model, vb_target *T) {
    SEXP m = vb_elt_req(model, "m", "model");
    if (TYPEOF(m) != REALSXP || Rf_xlength(m) < 1 || Rf_xlength(m) > 10000)
        Rf_error("the gauss target needs a double vector 'm' of length 1 to 10000");
    int d = (int)Rf_xlength(m);
    gauss_target *G = (gauss_target *)R_alloc(1, sizeof(gauss_target));
    G->d = d;
    G->m = REAL(m);
    G->A = vb_real_elt(model, "A", (R_xlen_t)d * d, "model");
    for (int i = 0; i < d; i++)
        if (!R_FINITE(G->m[i])) Rf_error("the gauss target's 'm' must be finite");
    for (R_xlen_t k = 0; k < (R_xlen_t)d * d; k++)
        if (!R_FINITE(G->A[k])) Rf_error("the gauss target's 'A' must be finite");
    G->r = (double *)R_alloc(d, sizeof(double));
    T->d = d;
    T->f = gauss_log_joint;
    T->model = G;
}

static void r_setup(SEXP model, SEXP holder, vb_target *T) {
    SEXP fn = vb_elt_req(model, "fn", "model");
    if (!Rf_isFunction(fn)) Rf_error("the r target's 'fn' must be a function(theta, grad)");
    if (TYPEOF(holder) != VECSXP || Rf_xlength(holder) != 2)
        Rf_error("internal error: the r target needs a holder list of length 2");
    r_target *R = (r_target *)R_alloc(1, sizeof(r_target));
    R->d = vb_int_elt(model, "d", 1, 100000, "model");
    R->fn = fn;
    R->holder = holder;
    R->status = VB_OK;
    T->d = R->d;
    T->f = r_log_joint;
    T->model = R;
    T->status = &R->status;
}

void vb_target_setup(SEXP model, SEXP holder, vb_target *T) {
    SEXP type = vb_elt_req(model, "type", "model");
    if (TYPEOF(type) != STRSXP || Rf_length(type) != 1 || STRING_ELT(type, 0) == NA_STRING)
        Rf_error("'model$type' must be a string: \"glm\", \"gauss\" or \"r\"");
    const char *ty = CHAR(STRING_ELT(type, 0));
    T->status = NULL;
    if (strcmp(ty, "glm") == 0)
        glm_setup(model, T);
    else if (strcmp(ty, "gauss") == 0)
        gauss_setup(model, T);
    else if (strcmp(ty, "r") == 0)
        r_setup(model, holder, T);
    else
        Rf_error("unknown model type '%s' (expected \"glm\", \"gauss\" or \"r\")", ty);
}
