/*
 * lds_block.c — the block E-step of the latent dynamical system: the family
 * between meanfield and the full Markov chain.
 *
 * q(z_{1:T}) = prod_k q_k(z_{B_k}) for a partition of the time steps into
 * contiguous runs B_k = [s_k, s_{k+1}); each q_k is Gaussian with a
 * block-tridiagonal precision over its own steps (diagonal blocks D_t,
 * sub-diagonal blocks L_t = Lambda_{t,t-1} inside the run) and linear term
 * b_t.  Runs of length 1 give meanfield, one run of length T the structured
 * family; richer partitions never have a lower optimal ELBO.
 *
 * Update.  With the other runs fixed, the ELBO in q_k is the local objective
 *   f_k = sum_{t in B_k} [E log p(y_t | z_t) - <P_t, S_t + m_t m_t'>/2 + lin_t'm_t]
 *         + sum_{t in B_k, t > s_k} [tr(Q^{-1}A Sc_t') + m_t'Q^{-1}A m_{t-1}] + log|Sigma_k|/2,
 * P_t the prior's diagonal precision block, lin_t the prior's linear term
 * (V0^{-1}m0 at t = 0) plus the neighbouring runs' means at the run's two
 * ends (Q^{-1}A m_{s_k - 1}, A'Q^{-1} m_{s_{k+1}}).  The proposal is the
 * prior's precision restricted to the run plus blockdiag(J_t), linear term
 * lin_t + h_t ((J, h): the pseudo-observations of lds_model.c, exact for the
 * gaussian, so then the proposal is the exact coordinate optimum); the step
 * q_a = (1 - a) q_k + a proposal in natural parameters, a = 1, 1/2, ... by
 * vb_step_search(), never decreases f_k.  Moments of a trial come from
 * vb_btd_solve() on the run.  Sweeps over the runs stop as the meanfield
 * E-step's do (VB_OK by vb_tol_met() on the whole ELBO, VB_MAXIT,
 * VB_DECREASED, VB_NONFINITE, a failed step's status, VB_INTERRUPTED).
 *
 * Inputs: the model; nb runs with starts s[0..nb] (s[0] = 0, s[nb] = T); the
 * natural parameters D (d x d x T), Ls (d x d x T, Ls_t = 0 at run starts)
 * and b (d x T) of the current q, and its moments m, S, Sc (zero across run
 * boundaries) and per-run log|Sigma_k| in ld; maxit, tol.  Outputs: all of
 * these in place, *iter sweeps, *elbo, *loglik.  Work LDS_BLOCK_WORK(N, d,
 * Lmax) doubles, Lmax the longest run.  Cost O(T (N d^2 + d^3)) per sweep.
 */
#include "lds.h"

typedef struct {
    const lds_model *M;
    int s0, n; /* the run: steps s0 .. s0 + n - 1 */
    const double *D, *Ls, *b, *P, *lin, *J, *h;
    double *tD, *tL, *tb, *tm, *tS, *tSc, tld, *btd, *obs;
} block_ctx;

/* f_k of a run whose moments are (m, S, Sc) (run-local arrays), log|Sigma| ld. */
static double block_obj(const lds_model *M, int s0, int n, const double *m, const double *S,
                        const double *Sc, double ld, const double *P, const double *lin,
                        double *obs) {
    int d = M->d;
    size_t dd = (size_t)d * d;
    double f = 0.5 * ld, *u = obs + LDS_OBS_WORK(M->N, d);
    for (int j = 0; j < n; j++) {
        const double *mt = m + (size_t)j * d, *St = S + j * dd, *Pt = P + j * dd;
        f += lds_obs_term(M, s0 + j, mt, St, NULL, NULL, obs);
        lds_gemv("N", d, d, 1.0, Pt, mt, 0.0, u);
        f += -0.5 * (lds_dot(dd, Pt, St) + lds_dot(d, mt, u)) + lds_dot(d, lin + (size_t)j * d, mt);
        if (j > 0) {
            /* tr(QiA Sc_t') = sum_kl QiA_kl Sc_t,kl; m_t' QiA m_{t-1} */
            lds_gemv("N", d, d, 1.0, M->QiA, mt - d, 0.0, u);
            f += lds_dot(dd, M->QiA, Sc + j * dd) + lds_dot(d, mt, u);
        }
    }
    return f;
}

static int block_try(double a, void *ctx_, double *value) {
    block_ctx *c = (block_ctx *)ctx_;
    int d = c->M->d, n = c->n;
    size_t dd = (size_t)d * d;
    for (int j = 0; j < n; j++) {
        for (size_t k = 0; k < dd; k++) {
            c->tD[j * dd + k] =
                (1.0 - a) * c->D[j * dd + k] + a * (c->P[j * dd + k] + c->J[j * dd + k]);
            c->tL[j * dd + k] = j == 0 ? 0.0 : (1.0 - a) * c->Ls[j * dd + k] - a * c->M->QiA[k];
        }
        for (int k = 0; k < d; k++)
            c->tb[(size_t)j * d + k] = (1.0 - a) * c->b[(size_t)j * d + k] +
                                       a * (c->lin[(size_t)j * d + k] + c->h[(size_t)j * d + k]);
    }
    int st = vb_btd_solve(n, d, c->tD, c->tL, dd, c->tb, c->tm, c->tS, c->tSc, &c->tld, c->btd);
    if (st != VB_OK) return st;
    *value = block_obj(c->M, c->s0, n, c->tm, c->tS, c->tSc, c->tld, c->P, c->lin, c->obs);
    return VB_OK;
}

static double total_elbo(const lds_model *M, const double *m, const double *S, const double *Sc,
                         const double *ld, int nb, double *loglik, double *work) {
    double l = 0.0;
    for (int k = 0; k < nb; k++)
        l += ld[k];
    *loglik = lds_obs_total(M, m, S, work);
    return *loglik + lds_latent_term(M, m, S, Sc, l, work);
}

int lds_estep_block(const lds_model *M, int nb, const int *s, double *D, double *Ls, double *b,
                    double *m, double *S, double *Sc, double *ld, int maxit, double tol, int *iter,
                    double *elbo, double *loglik, double *work) {
    int d = M->d, Lmax = 0, st;
    size_t dd = (size_t)d * d;
    for (int k = 0; k < nb; k++)
        if (s[k + 1] - s[k] > Lmax) Lmax = s[k + 1] - s[k];
    size_t Ld = (size_t)Lmax * d, Ldd = (size_t)Lmax * dd;
    double *P = work, *lin = P + Ldd, *J = lin + Ld, *h = J + Ldd, *tD = h + Ld, *tL = tD + Ldd,
           *tb = tL + Ldd, *tm = tb + Ld, *tS = tm + Ld, *tSc = tS + Ldd, *btd = tSc + Ldd,
           *obs = btd + VB_BTD_WORK(d);
    block_ctx c = {M, 0, 0, NULL, NULL, NULL, P, lin, J, h, tD, tL, tb, tm, tS, tSc, 0.0, btd, obs};
    *iter = 0;
    double cur = total_elbo(M, m, S, Sc, ld, nb, loglik, obs);
    *elbo = cur;
    if (!R_FINITE(cur)) return VB_NONFINITE;
    for (int it = 1; it <= maxit; it++) {
        *iter = it;
        for (int k = 0; k < nb; k++) {
            int s0 = s[k], n = s[k + 1] - s0;
            size_t o1 = (size_t)s0 * d, o2 = (size_t)s0 * dd;
            for (int j = 0; j < n; j++) {
                int t = s0 + j;
                lds_prior_diag(M, t, P + j * dd);
                for (int q = 0; q < d; q++)
                    lin[(size_t)j * d + q] = t == 0 ? M->V0im0[q] : 0.0;
                lds_obs_term(M, t, m + (size_t)t * d, S + (size_t)t * dd, J + j * dd,
                             h + (size_t)j * d, obs);
            }
            if (s0 > 0) lds_gemv("N", d, d, 1.0, M->QiA, m + o1 - d, 1.0, lin);
            if (s0 + n < M->T)
                lds_gemv("T", d, d, 1.0, M->QiA, m + (size_t)(s0 + n) * d, 1.0,
                         lin + (size_t)(n - 1) * d);
            double f0 = block_obj(M, s0, n, m + o1, S + o2, Sc + o2, ld[k], P, lin, obs), a, f1;
            c.s0 = s0;
            c.n = n;
            c.D = D + o2;
            c.Ls = Ls + o2;
            c.b = b + o1;
            st = vb_step_search(block_try, &c, f0, &a, &f1);
            if (st == VB_OK && k % LDS_POLL == LDS_POLL - 1 && vb_interrupted())
                st = VB_INTERRUPTED;
            if (st != VB_OK) {
                *elbo = total_elbo(M, m, S, Sc, ld, nb, loglik, obs);
                return st;
            }
            memcpy(D + o2, tD, (size_t)n * dd * sizeof(double));
            memcpy(Ls + o2, tL, (size_t)n * dd * sizeof(double));
            memcpy(b + o1, tb, (size_t)n * d * sizeof(double));
            memcpy(m + o1, tm, (size_t)n * d * sizeof(double));
            memcpy(S + o2, tS, (size_t)n * dd * sizeof(double));
            memcpy(Sc + o2, tSc, (size_t)n * dd * sizeof(double));
            memset(Sc + o2, 0, dd * sizeof(double)); /* no covariance with the previous run */
            ld[k] = c.tld;
        }
        if (vb_interrupted()) return VB_INTERRUPTED;
        double nw = total_elbo(M, m, S, Sc, ld, nb, loglik, obs);
        *elbo = nw;
        if (!R_FINITE(nw)) return VB_NONFINITE;
        if (nw < cur - LDS_ELBO_SLACK * (1.0 + fabs(cur))) return VB_DECREASED;
        if (vb_tol_met(cur, nw, tol)) return VB_OK;
        cur = nw;
    }
    return VB_MAXIT;
}
