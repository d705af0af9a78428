/*
 * glm_jj.c — logistic regression by the Jaakkola-Jordan bound (equivalently
 * mean-field CAVI on the Polya-Gamma augmented model), normal priors, dense q:
 *   Sigma^-1 = S0^-1 + 2 X' diag(n lambda(xi)) X,
 *   mu = Sigma (S0^-1 m0 + X'(y - n/2 - 2 n lambda(xi) o)),   xi_t^2 = E eta_t^2,
 * with lambda(xi) = tanh(xi/2)/(4 xi).  Each step is an exact coordinate
 * ascent step on the bound, so its trace is monotone; convergence needs the
 * bound finite, non-decreasing and its relative change within tol.
 *
 * Inputs: model list (glm_model.c; binomial, normal priors), control (the
 * vb_control() list).  Output: the GLM result list (vb_glm_result).
 * Cost per iteration 2np^2 + p^3/3; memory O(np + p^2).
 */
#include "vbayes.h"

static double jj_lambda(double xi) {
    return xi < 1e-4 ? 0.125 - xi * xi / 96.0 : tanh(0.5 * xi) / (4.0 * xi);
}

typedef struct {
    const vb_glm *M;
    double *xi2, *w, *r, *m, *v, *work, *Lam, *mu; /* n, n, n, n, n, n x p, p x p, p */
} jj_state;

/* q(beta) given xi, then the bound at (q, xi); Lam ends holding Sigma. */
static int jj_update(jj_state *J, double *elbo, double *ll, double *kl) {
    const vb_glm *M = J->M;
    int n = M->n, p = M->p, one = 1;
    double done = 1.0, dzero = 0.0;
    for (int t = 0; t < n; t++) {
        double lam = jj_lambda(sqrt(J->xi2[t]));
        J->w[t] = 2.0 * M->wt[t] * lam;
        J->r[t] = M->y[t] - 0.5 * M->wt[t] - J->w[t] * M->off[t];
    }
    if (vb_xtwx(n, p, M->X, n, J->w, J->work, J->Lam) != VB_OK) return VB_INTERRUPTED;
    if (p > 0) F77_CALL(dgemv)("T", &n, &p, &done, M->X, &n, J->r, &one, &dzero, J->mu, &one FCONE);
    for (int j = 0; j < p; j++) {
        double s2 = M->pscale[j] * M->pscale[j];
        J->Lam[j + (size_t)j * p] += 1.0 / s2;
        J->mu[j] += M->ploc[j] / s2;
    }
    int info = vb_chol(p, J->Lam, p);
    if (info != 0) return vb_lapack_status(info);
    vb_chol_solve(p, J->Lam, p, J->mu);
    double ldet = -vb_chol_logdet(p, J->Lam, p); /* log|Sigma| */
    /* linear predictor moments: v_t = || R^{-T} x_t ||^2 */
    if (vb_rowvar(n, p, M->X, n, J->Lam, J->work, J->v) != VB_OK) return VB_INTERRUPTED;
    for (int t = 0; t < n; t++)
        J->m[t] = M->off[t];
    if (p > 0) F77_CALL(dgemv)("N", &n, &p, &done, M->X, &n, J->mu, &one, &done, J->m, &one FCONE);
    *ll = M->llconst;
    for (int t = 0; t < n; t++) {
        double nt = M->wt[t], x = sqrt(J->xi2[t]), lam = jj_lambda(x);
        if (nt == 0) continue;
        *ll += (M->y[t] - 0.5 * nt) * J->m[t] - nt * lam * (J->m[t] * J->m[t] + J->v[t]) +
               nt * (lam * J->xi2[t] - vb_softplus(-x) - 0.5 * x);
    }
    info = vb_chol_inv(p, J->Lam, p);
    if (info != 0) return vb_lapack_status(info);
    double G = 0, a, c;
    for (int j = 0; j < p; j++)
        G += vb_glm_prior(M, j, J->mu[j], J->Lam[j + (size_t)j * p], &a, &c);
    *kl = -(G + 0.5 * ldet + 0.5 * p * (1 + VB_LOG2PI));
    *elbo = *ll - *kl;
    return R_FINITE(*elbo) ? VB_OK : VB_NONFINITE;
}

static int jj_run(jj_state *J, const vb_settings *set, vb_trace *tr, int *iter, double *elbo,
                  double *ll, double *kl) {
    for (int t = 0; t < J->M->n; t++)
        J->xi2[t] = 0;
    vb_progress pr;
    vb_progress_init(&pr, set->quiet);
    *iter = 0;
    for (int it = 0; it <= set->maxit; it++) {
        double prev = *elbo;
        int st = jj_update(J, elbo, ll, kl);
        if (st != VB_OK) return st;
        vb_trace_push(tr, *elbo);
        *iter = it;
        vb_progress_tick(&pr, "vb (JJ)", it, *elbo);
        for (int t = 0; t < J->M->n; t++)
            J->xi2[t] = J->m[t] * J->m[t] + J->v[t];
        if (it > 0) {
            if (*elbo < prev - vb_step_slack(prev)) return VB_DECREASED;
            if (vb_tol_met(prev, *elbo, set->tol)) return VB_OK;
        }
        if (vb_interrupted()) return VB_INTERRUPTED;
    }
    return VB_MAXIT;
}

SEXP C_glm_jj(SEXP model, SEXP control) {
    vb_glm M;
    vb_glm_unpack(model, &M);
    vb_settings set;
    vb_settings_read(control, &set);
    int n = M.n, p = M.p;
    if (M.family != VB_BINOMIAL) Rf_error("the Jaakkola-Jordan bound is for binomial models");
    for (int j = 0; j < p; j++)
        if (M.ptype[j] != VB_PRIOR_NORMAL)
            Rf_error("the Jaakkola-Jordan bound needs normal priors");
    jj_state J;
    J.M = &M;
    double **nbufs[] = {&J.xi2, &J.w, &J.r, &J.m, &J.v};
    for (int i = 0; i < 5; i++)
        *nbufs[i] = (double *)R_alloc(n + 1, sizeof(double));
    J.work = (double *)R_alloc((size_t)(n < VB_CHUNK ? n : VB_CHUNK) * p + 1, sizeof(double));
    J.Lam = (double *)R_alloc((size_t)p * p + 1, sizeof(double));
    J.mu = (double *)R_alloc(p + 1, sizeof(double));
    vb_trace tr;
    vb_trace_init(&tr);
    int it;
    double elbo = R_NegInf, ll = R_NaN, kl = R_NaN;
    int status = jj_run(&J, &set, &tr, &it, &elbo, &ll, &kl);
    SEXP out = vb_glm_result(&M, J.mu, J.Lam, elbo, &tr, it, ll, kl, status, NULL, J.m, J.v);
    UNPROTECT(1);
    return out;
}
