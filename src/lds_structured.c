/*
 * lds_structured.c — the structured E-step of the latent dynamical system.
 *
 * q(z_{1:T}) is Gaussian with block-tridiagonal precision Lambda (diagonal
 * blocks D_t, one sub-diagonal block L = Lambda_{t,t-1} for every t) and
 * linear term b; vb_btd_solve() (btd.c) turns (D, L, b) into the moments
 * the ELBO needs.  Every q visited keeps L constant in t: the prior's is
 * -Q^{-1}A, and each step is a convex combination of two such q.
 *
 * Update.  Each observation block enters through its pseudo-observations
 * (J_t, h_t) (lds_model.c).  The proposal is the prior precision plus
 * blockdiag(J), with linear term the prior's plus h; the step is taken in
 * natural parameters, q_a = (1 - a) q + a proposal, a = 1, 1/2, ... by the
 * toolkit's vb_step_search(), so the ELBO never decreases (beyond rounding)
 * even when q was left by other parameter values.  For the gaussian the
 * proposal is the exact posterior (the ELBO equals log p(y)) and one pass is
 * taken from any start; for the poisson it is the NCVMP / natural-gradient
 * fixed point, iterated until vb_tol_met() (VB_OK), maxit (VB_MAXIT), or
 * the step search fails (VB_STALLED, VB_NOT_PD, VB_NONFINITE).  A failing
 * worker leaves the last accepted q in *cur.
 *
 * Inputs: the model, cur (natural parameters set; moments are computed),
 * try_ (scratch of the same shape), maxit, tol.  Outputs: *cur, *iter
 * (fixed-point iterations), *passes (smoother passes).  Work
 * LDS_ESTEP_WORK(N, d) doubles.  Cost per iteration O(T (N d^2 + d^3)) per
 * trial step; memory about 8 T d^2 doubles for cur and try_.
 */
#include "lds.h"

/* The prior as a q: the natural parameters of p(z). */
void lds_q_prior(const lds_model *M, lds_q *q) {
    int d = M->d;
    size_t dd = (size_t)d * d;
    for (size_t k = 0; k < dd; k++)
        q->L[k] = -M->QiA[k];
    for (int t = 0; t < M->T; t++) {
        lds_prior_diag(M, t, q->D + t * dd);
        for (int k = 0; k < d; k++)
            q->b[(size_t)t * d + k] = t == 0 ? M->V0im0[k] : 0.0;
    }
}

/* Moments, ELBO and next pseudo-observations of q from its natural parameters. */
static int q_eval(const lds_model *M, lds_q *q, double *work) {
    size_t d = M->d, dd = d * d;
    int st = vb_btd_solve(M->T, M->d, q->D, q->L, 0, q->b, q->m, q->S, q->Sc, &q->logdet, work);
    if (st != VB_OK) return st;
    double ll = 0.0;
    for (int t = 0; t < M->T; t++)
        ll += lds_obs_term(M, t, q->m + t * d, q->S + t * dd, q->J ? q->J + t * dd : NULL,
                           q->h ? q->h + t * d : NULL, work);
    q->loglik = ll - M->lgy;
    q->elbo = q->loglik + lds_latent_term(M, q->m, q->S, q->Sc, q->logdet, work);
    return R_FINITE(q->elbo) ? VB_OK : VB_NONFINITE;
}

typedef struct {
    const lds_model *M;
    const lds_q *cur;
    lds_q *try_;
    double *D0, *work;
    int *passes;
} step_ctx;

/* The trial q_a = (1 - a) cur + a (prior + pseudo-observations of cur). */
static int step_try(double a, void *ctx_, double *value) {
    step_ctx *c = (step_ctx *)ctx_;
    const lds_model *M = c->M;
    const lds_q *cur = c->cur;
    lds_q *q = c->try_;
    size_t d = M->d, dd = d * d;
    for (size_t k = 0; k < dd; k++)
        q->L[k] = (1.0 - a) * cur->L[k] - a * M->QiA[k];
    for (int t = 0; t < M->T; t++) {
        double *Dt = q->D + t * dd, *bt = q->b + t * d;
        const double *Dc = cur->D + t * dd, *bc = cur->b + t * d;
        const double *Jt = cur->J + t * dd, *ht = cur->h + t * d;
        lds_prior_diag(M, t, c->D0);
        for (size_t k = 0; k < dd; k++)
            Dt[k] = (1.0 - a) * Dc[k] + a * (c->D0[k] + Jt[k]);
        for (size_t k = 0; k < d; k++)
            bt[k] = (1.0 - a) * bc[k] + a * (ht[k] + (t == 0 ? M->V0im0[k] : 0.0));
    }
    (*c->passes)++;
    int st = q_eval(M, q, c->work);
    *value = q->elbo;
    return st == VB_NONFINITE ? VB_OK : st; /* a non-finite value is the search's to judge */
}

int lds_estep_structured(const lds_model *M, lds_q *cur, lds_q *try_, int maxit, double tol,
                         int *iter, int *passes, double *work) {
    size_t dd = (size_t)M->d * M->d;
    double *D0 = work, *wk = work + dd;
    int st;
    *iter = 0;
    *passes = 0;
    if (M->family == VB_GAUSSIAN) {
        /* exact in one pass: the pseudo-observations do not depend on q */
        lds_q_prior(M, cur);
        double *Jw = wk, *hw = Jw + dd, *wk2 = hw + M->d, *zero = wk2 + LDS_OBS_WORK(M->N, M->d);
        memset(zero, 0, dd * sizeof(double));
        for (int t = 0; t < M->T; t++) {
            lds_obs_term(M, t, zero, zero, Jw, hw, wk2); /* J_t, h_t (free of q) */
            for (size_t k = 0; k < dd; k++)
                cur->D[t * dd + k] += Jw[k];
            for (int k = 0; k < M->d; k++)
                cur->b[(size_t)t * M->d + k] += hw[k];
        }
        *iter = *passes = 1;
        return q_eval(M, cur, wk);
    }
    if ((st = q_eval(M, cur, wk)) != VB_OK) return st;
    *passes = 1;
    step_ctx ctx = {M, NULL, NULL, D0, wk, passes};
    for (int it = 1; it <= maxit; it++) {
        double a, val, old = cur->elbo;
        ctx.cur = cur;
        ctx.try_ = try_;
        *iter = it;
        if ((st = vb_step_search(step_try, &ctx, old, &a, &val)) != VB_OK) return st;
        lds_q tmp = *cur; /* the accepted trial becomes the current q */
        *cur = *try_;
        *try_ = tmp;
        if (vb_tol_met(old, cur->elbo, tol)) return VB_OK;
        if (vb_interrupted()) return VB_INTERRUPTED;
    }
    return VB_MAXIT;
}
