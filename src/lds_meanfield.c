/*
 * lds_meanfield.c — the meanfield E-step of the latent dynamical system.
 *
 * q = prod_t N(m_t, S_t), by block coordinate ascent over t.  With the other
 * factors fixed, the ELBO in q(z_t) is the local objective
 *   f_t = E log p(y_t | z_t) - <P_t, S_t + m_t m_t'>/2 + lin_t'm_t + log|S_t|/2,
 * P_t the prior's diagonal precision block, lin_t = [V0^{-1}m0]_t +
 * Q^{-1}A m_{t-1} + A'Q^{-1} m_{t+1}.  Update: the local natural-gradient
 * step to precision P_t + J_t and linear term lin_t + h_t (the
 * pseudo-observations, lds_model.c; exact for the gaussian), damped as
 * (1 - a) current + a proposal with a = 1, 1/2, ... by vb_step_search(), so
 * no local step decreases f_t.  Sweeps stop when vb_tol_met() holds for the
 * whole ELBO (VB_OK), after maxit sweeps (VB_MAXIT), when the ELBO decreases
 * beyond LDS_ELBO_SLACK (VB_DECREASED) or is not finite (VB_NONFINITE), or a
 * step fails (its status).  Interrupts are polled every LDS_POLL time steps
 * and after every sweep.
 *
 * Inputs: the model, the factors m (d x T), S (d x d x T) with their
 * log-determinants logdetS (T), maxit, tol; Sc0 (d x d x T) all zero (the
 * cross-covariances of a factorised q).  Outputs: the factors in place,
 * *iter sweeps, *elbo, *loglik.  Work LDS_ESTEP_WORK(N, d) doubles.  Cost
 * O(T (N d^2 + d^3)) per sweep.
 */
#include "lds.h"

typedef struct {
    const lds_model *M;
    int t;
    const double *P, *lin, *J, *h, *Lc, *etac;
    double *Ln, *etan, *mn, *Sn, *ldS, *work;
} local_ctx;

/* Local objective of q(z_t) = N(m, S) with the others fixed. */
static double local_obj(const lds_model *M, int t, const double *m, const double *S,
                        const double *P, const double *lin, double logdetS, double *work) {
    int d = M->d;
    double *u = work, *wk = work + d;
    double val = lds_obs_term(M, t, m, S, NULL, NULL, wk);
    lds_gemv("N", d, d, 1.0, P, m, 0.0, u);
    return val - 0.5 * (lds_dot((size_t)d * d, P, S) + lds_dot(d, m, u)) + lds_dot(d, lin, m) +
           0.5 * logdetS;
}

static int local_try(double a, void *ctx_, double *value) {
    local_ctx *c = (local_ctx *)ctx_;
    int d = c->M->d, st;
    size_t dd = (size_t)d * d;
    for (size_t k = 0; k < dd; k++)
        c->Ln[k] = (1.0 - a) * c->Lc[k] + a * (c->P[k] + c->J[k]);
    for (int k = 0; k < d; k++)
        c->etan[k] = (1.0 - a) * c->etac[k] + a * (c->lin[k] + c->h[k]);
    memcpy(c->Sn, c->Ln, dd * sizeof(double));
    if ((st = lds_spd_inverse(d, c->Sn, c->ldS)) != VB_OK) return st;
    *c->ldS = -*c->ldS;
    lds_gemv("N", d, d, 1.0, c->Sn, c->etan, 0.0, c->mn);
    *value = local_obj(c->M, c->t, c->mn, c->Sn, c->P, c->lin, *c->ldS, c->work);
    return VB_OK;
}

static double total_elbo(const lds_model *M, const double *m, const double *S,
                         const double *logdetS, const double *Sc0, double *loglik, double *work) {
    double ld = 0.0;
    for (int t = 0; t < M->T; t++)
        ld += logdetS[t];
    *loglik = lds_obs_total(M, m, S, work);
    return *loglik + lds_latent_term(M, m, S, Sc0, ld, work);
}

int lds_estep_meanfield(const lds_model *M, double *m, double *S, double *logdetS, int maxit,
                        double tol, int *iter, double *elbo, double *loglik, double *Sc0,
                        double *work) {
    int T = M->T, d = M->d, st;
    size_t dd = (size_t)d * d;
    double *P = work, *lin = P + dd, *J = lin + d, *h = J + dd, *Lc = h + d, *etac = Lc + dd,
           *Ln = etac + d, *etan = Ln + dd, *mn = etan + d, *Sn = mn + d, *wk = Sn + dd, ldS = 0.0;
    local_ctx ctx = {M, 0, P, lin, J, h, Lc, etac, Ln, etan, mn, Sn, &ldS, wk};
    *iter = 0;
    double cur = total_elbo(M, m, S, logdetS, Sc0, loglik, wk);
    *elbo = cur;
    if (!R_FINITE(cur)) return VB_NONFINITE;
    for (int it = 1; it <= maxit; it++) {
        *iter = it;
        for (int t = 0; t < T; t++) {
            double *mt = m + (size_t)t * d, *St = S + (size_t)t * dd, a, f1;
            lds_prior_diag(M, t, P);
            for (int k = 0; k < d; k++)
                lin[k] = t == 0 ? M->V0im0[k] : 0.0;
            if (t > 0) lds_gemv("N", d, d, 1.0, M->QiA, m + (size_t)(t - 1) * d, 1.0, lin);
            if (t < T - 1) lds_gemv("T", d, d, 1.0, M->QiA, m + (size_t)(t + 1) * d, 1.0, lin);
            double f0 = local_obj(M, t, mt, St, P, lin, logdetS[t], wk);
            lds_obs_term(M, t, mt, St, J, h, wk);
            memcpy(Lc, St, dd * sizeof(double)); /* the current natural parameters */
            if ((st = lds_spd_inverse(d, Lc, NULL)) == VB_OK) {
                lds_gemv("N", d, d, 1.0, Lc, mt, 0.0, etac);
                ctx.t = t;
                st = vb_step_search(local_try, &ctx, f0, &a, &f1);
            }
            if (st == VB_OK && t % LDS_POLL == LDS_POLL - 1 && vb_interrupted())
                st = VB_INTERRUPTED;
            if (st != VB_OK) { /* keep the factors accepted so far, and their ELBO */
                *elbo = total_elbo(M, m, S, logdetS, Sc0, loglik, wk);
                return st;
            }
            memcpy(mt, mn, (size_t)d * sizeof(double));
            memcpy(St, Sn, dd * sizeof(double));
            logdetS[t] = ldS;
        }
        if (vb_interrupted()) return VB_INTERRUPTED;
        double nw = total_elbo(M, m, S, logdetS, Sc0, loglik, wk);
        *elbo = nw;
        if (!R_FINITE(nw)) return VB_NONFINITE;
        if (nw < cur - LDS_ELBO_SLACK * (1.0 + fabs(cur))) return VB_DECREASED;
        if (vb_tol_met(cur, nw, tol)) return VB_OK;
        cur = nw;
    }
    return VB_MAXIT;
}
