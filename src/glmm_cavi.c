/*
 * glmm_cavi.c — coordinate ascent for hierarchical GLMs (the model and the
 * covariance factors: glmm_model.c).
 *
 * q = q(beta, b) q(tau) prod_c q(Sigma_c) q(a_c), q(beta, b) Gaussian:
 *   partial   q(beta | b) prod_j q(b_j): beta coupled to the effects of every
 *             grouping factor, the factors independent of each other, groups
 *             of a factor independent given beta (see "partial path"); with
 *             one factor this is the whole Gaussian family, since the
 *             optimum's precision C'WC + P has its arrowhead pattern;
 *   block     q(beta) prod_{j,g} q(b_jg);   meanfield: every coordinate alone;
 *   fullrank  one dense Gaussian (small problems, for checking).
 * The covariance of a factorised q is block diagonal over "cells"; a sweep
 * updates "units" (one cell, or all groups of a factor at once: they share
 * no observation, so a joint update is exact coordinate ascent).
 *
 * Update of a unit (fixed-point Newton / NCVMP, as glm_cavi.c): with
 * W = diag(-2 df/dv), the cell's Lambda* = C_c'WC_c + P_cc and gradient
 * g = C_c' df/dm - [P (mu - mu0)]_c; Lambda_a = (1-a) Lambda + a Lambda*,
 * mu += a Lambda_a^-1 g, a = 1, 1/2, ... by vb_step_search, so the ELBO
 * never decreases; for the gaussian family a = 1 is the exact optimum.
 * partial solves with per-factor Schur complements on beta (T_j = A -
 * sum_g B_jg D_jg^-1 B_jg', Woodbury for q(b_j)).  Then q(Sigma), q(a) (closed
 * form), q(tau) (gaussian, closed form) and a parameter-expansion step per
 * factor (b_g -> R b_g, kept only when the ELBO rises).
 *
 * Convergence (VB_OK): every unit step accepted, ELBO finite and not
 * decreasing, its relative change and the gain the full Newton steps still
 * predict (sum 1/2 g' Lambda*^-1 g) within tol.
 *
 * Inputs: model (glm_model() list + factors, covs, approx, fix_tau), init
 * (list: mu of length D, tau = c(shape, rate)), control.  Outputs: mu, the
 * covariance of beta, the groups' marginal means/covariances, q(Sigma),
 * q(a), q(tau), eta mean/variance, ELBO, trace, status.
 * Cost per sweep O(n (p + sum_j d_j)^2 + sum_j G_j (d_j^3 + p d_j^2) + J p^3)
 * for partial and block (plus O(n d_j^2 + G_j d_j^4) per expansion step);
 * fullrank O(n (p + sum d)^2 + D^3).  No D x D matrix but fullrank.
 */
#include "glmm.h"

typedef struct {
    int a, k, fac, grp; /* theta[a .. a+k-1]; fac < 0: every observation */
    double *Lam, *Sig, *Hs, *gv, *mu0, *Lam0, *Sig0, *R;
} cell;

typedef struct {
    glmm_model *G;
    vb_glm *M;
    int n, p, D, ncell, nunit, *ustart;
    double *mu, *m, *v, *dm, *dv, *mt, *vt, *s2b;
    double A, B;
    cell *cells;
    int uc; /* the unit being updated */
    /* partial: A (p x p); per factor j at offsets bo[j] (B, K: p d_j G_j) and
     * dof[j] (D, Rg, Sg: d_j^2 G_j); Tc, Ti: J blocks of p x p */
    double *A0, *B0, *D0, *As, *Bs, *Ds, *Ac, *Bc, *Dc, *Rg, *K, *Sb, *Sg, *gvec, *mu0, *work;
    double *RA, *Ai, *Tc, *Ti;
    size_t nB, nDD, *bo, *dof;
    int dmax;
    double ldet, pred;
    int *idx;
    double *val, *u;
    /* parameter-expansion step */
    double *mupx, *pxbuf, *pxwork, *pxcov;
    int px, pxcs, *cellof;
} gstate;

static double *dalloc(size_t n) {
    double *x = (double *)R_alloc(n + 1, sizeof(double));
    memset(x, 0, sizeof(double) * (n + 1));
    return x;
}

/* nonzeros of row i of C = [X, Z_1 (expanded), ...]: global positions, values */
static int obs_row(const gstate *S, int i, int *idx, double *val) {
    int c = 0, n = S->n;
    for (int k = 0; k < S->p; k++) {
        idx[c] = k;
        val[c++] = S->M->X[i + (size_t)k * n];
    }
    for (int j = 0; j < S->G->J; j++) {
        const glmm_factor *F = S->G->F + j;
        int base = F->off + F->grp[i] * F->d;
        for (int k = 0; k < F->d; k++) {
            idx[c] = base + k;
            val[c++] = F->Z[i + (size_t)k * n];
        }
    }
    return c;
}

/* prior precision entry and [P (mu - mu0)] at global positions */
static void pos_where(const gstate *S, int pos, int *j, int *g, int *k) {
    if (pos < S->p) {
        *j = -1;
        *g = 0;
        *k = pos;
        return;
    }
    for (int f = 0; f < S->G->J; f++) {
        const glmm_factor *F = S->G->F + f;
        if (pos < F->off + F->G * F->d) {
            *j = f;
            *g = (pos - F->off) / F->d;
            *k = (pos - F->off) % F->d;
            return;
        }
    }
    *j = -2;
}

static double prior_prec(const gstate *S, int p1, int p2) {
    int j1, g1, k1, j2, g2, k2;
    pos_where(S, p1, &j1, &g1, &k1);
    pos_where(S, p2, &j2, &g2, &k2);
    if (j1 != j2 || g1 != g2) return 0;
    if (j1 == -1) return p1 == p2 ? 1.0 / (S->M->pscale[p1] * S->M->pscale[p1]) : 0;
    const glmm_factor *F = S->G->F + j1;
    return F->Om[k1 + (size_t)k2 * F->d];
}

static double prior_grad(const gstate *S, int pos) {
    int j, g, k;
    pos_where(S, pos, &j, &g, &k);
    if (j == -1) return (S->mu[pos] - S->M->ploc[pos]) / (S->M->pscale[pos] * S->M->pscale[pos]);
    const glmm_factor *F = S->G->F + j;
    double s = 0;
    const double *mg = S->mu + F->off + (size_t)g * F->d;
    for (int l = 0; l < F->d; l++)
        s += F->Om[k + (size_t)l * F->d] * mg[l];
    return s;
}

static void set_tau(gstate *S) {
    if (S->G->fix_tau) {
        S->M->Etau = S->A / S->B;
        S->M->Elogtau = log(S->A / S->B);
    } else {
        S->M->Etau = S->A / S->B;
        S->M->Elogtau = digamma(S->A) - log(S->B);
    }
}

static double sum_obs(gstate *S, const double *m, const double *v, int grad) {
    return vb_glm_obs_sum(S->M, m, v, grad ? S->dm : NULL, grad ? S->dv : NULL);
}

/* ------------------------------------------------ moments of q(beta, b) -- */

/* Fill s2b (beta variances), the factors' E = sum_g (m m' + S_g) and ldet. */
static int q_moments(gstate *S) {
    glmm_model *G = S->G;
    int p = S->p;
    for (int j = 0; j < G->J; j++)
        memset(G->F[j].E, 0, sizeof(double) * G->F[j].d * G->F[j].d);
    if (G->approx == GLMM_PARTIAL) {
        for (int k = 0; k < p; k++)
            S->s2b[k] = S->Sb[k + (size_t)k * p];
        for (int j = 0; j < G->J; j++) {
            glmm_factor *F = G->F + j;
            int d = F->d;
            for (int g = 0; g < F->G; g++) {
                const double *Sg = S->Sg + S->dof[j] + (size_t)g * d * d,
                             *mg = S->mu + F->off + (size_t)g * d;
                for (int a = 0; a < d; a++)
                    for (int b = 0; b < d; b++)
                        F->E[a + b * d] += Sg[a + b * d] + mg[a] * mg[b];
            }
        }
        return VB_OK;
    }
    S->ldet = 0;
    for (int c = 0; c < S->ncell; c++) {
        cell *C = S->cells + c;
        S->ldet -= vb_chol_logdet(C->k, C->R, C->k);
        for (int r = 0; r < C->k; r++)
            for (int s = 0; s < C->k; s++) {
                int p1 = C->a + r, p2 = C->a + s, j1, g1, k1, j2, g2, k2;
                pos_where(S, p1, &j1, &g1, &k1);
                pos_where(S, p2, &j2, &g2, &k2);
                double cv = C->Sig[r + (size_t)s * C->k];
                if (j1 == -1 && p1 == p2) S->s2b[p1] = cv;
                if (j1 >= 0 && j1 == j2 && g1 == g2) G->F[j1].E[k1 + (size_t)k2 * G->F[j1].d] += cv;
            }
    }
    for (int j = 0; j < G->J; j++) {
        glmm_factor *F = G->F + j;
        int d = F->d;
        for (int g = 0; g < F->G; g++) {
            const double *mg = S->mu + F->off + (size_t)g * d;
            for (int a = 0; a < d; a++)
                for (int b = 0; b < d; b++)
                    F->E[a + b * d] += mg[a] * mg[b];
        }
    }
    return VB_OK;
}

static int elbo_at(gstate *S, const double *m, const double *v, double *elbo, double *ll,
                   double *kl) {
    glmm_model *G = S->G;
    vb_glm *M = S->M;
    int st = q_moments(S);
    if (st != VB_OK) return st;
    *ll = sum_obs(S, m, v, 0) + M->llconst;
    double nk = 0, a, b;
    for (int k = 0; k < S->p; k++)
        nk += vb_glm_prior(M, k, S->mu[k], S->s2b[k], &a, &b);
    nk += glmm_re_prior(G) + 0.5 * S->ldet + 0.5 * S->D * (1 + VB_LOG2PI);
    nk += glmm_cov_terms(G);
    if (M->family == VB_GAUSSIAN && !G->fix_tau) nk += vb_glm_tau_terms(M, S->A, S->B);
    *kl = -nk;
    *elbo = *ll + nk;
    return R_FINITE(*elbo) ? VB_OK : VB_NONFINITE;
}

/* m and v from scratch at the current q (cells) */
static void cells_mv(gstate *S, double *m, double *v) {
    for (int i = 0; i < S->n; i++) {
        int nz = obs_row(S, i, S->idx, S->val);
        double mi = S->M->off[i];
        for (int r = 0; r < nz; r++)
            mi += S->val[r] * S->mu[S->idx[r]];
        m[i] = mi;
        v[i] = 0;
    }
    for (int c = 0; c < S->ncell; c++) {
        cell *C = S->cells + c;
        int lo = 0, hi = S->n;
        const int *ord = NULL;
        if (C->fac >= 0) {
            ord = S->G->F[C->fac].ord;
            lo = S->G->F[C->fac].gstart[C->grp];
            hi = S->G->F[C->fac].gstart[C->grp + 1];
        }
        for (int t = lo; t < hi; t++) {
            int i = ord ? ord[t] : t, nz = obs_row(S, i, S->idx, S->val), q = 0;
            for (int r = 0; r < nz; r++)
                if (S->idx[r] >= C->a && S->idx[r] < C->a + C->k) {
                    S->idx[q] = S->idx[r] - C->a;
                    S->val[q++] = S->val[r];
                }
            double s = 0;
            for (int r = 0; r < q; r++)
                for (int l = 0; l < q; l++)
                    s += S->val[r] * C->Sig[S->idx[r] + (size_t)S->idx[l] * C->k] * S->val[l];
            v[i] += s;
        }
    }
}

/* ---------------------------------------------------------- cells path -- */

/* Lambda*, g of every cell of unit u at the current q (dm, dv current) */
static void cells_prepare(gstate *S, int u) {
    for (int c = S->ustart[u]; c < S->ustart[u + 1]; c++) {
        cell *C = S->cells + c;
        int k = C->k, lo = 0, hi = S->n;
        const int *ord = NULL;
        memcpy(C->mu0, S->mu + C->a, sizeof(double) * k);
        memcpy(C->Lam0, C->Lam, sizeof(double) * k * k);
        memcpy(C->Sig0, C->Sig, sizeof(double) * k * k);
        for (int r = 0; r < k; r++) {
            C->gv[r] = -prior_grad(S, C->a + r);
            for (int s = 0; s < k; s++)
                C->Hs[r + (size_t)s * k] = prior_prec(S, C->a + r, C->a + s);
        }
        if (C->fac >= 0) {
            ord = S->G->F[C->fac].ord;
            lo = S->G->F[C->fac].gstart[C->grp];
            hi = S->G->F[C->fac].gstart[C->grp + 1];
        }
        for (int t = lo; t < hi; t++) {
            int i = ord ? ord[t] : t, nz = obs_row(S, i, S->idx, S->val), q = 0;
            double w = -2 * S->dv[i];
            for (int r = 0; r < nz; r++)
                if (S->idx[r] >= C->a && S->idx[r] < C->a + C->k) {
                    S->idx[q] = S->idx[r] - C->a;
                    S->val[q++] = S->val[r];
                }
            for (int r = 0; r < q; r++) {
                C->gv[S->idx[r]] += S->val[r] * S->dm[i];
                for (int l = 0; l < q; l++)
                    C->Hs[S->idx[r] + (size_t)S->idx[l] * k] += w * S->val[r] * S->val[l];
            }
        }
    }
}

static int cells_try(double a, void *ctx, double *value) {
    gstate *S = (gstate *)ctx;
    int u = S->uc;
    double pred = 0;
    for (int c = S->ustart[u]; c < S->ustart[u + 1]; c++) {
        cell *C = S->cells + c;
        int k = C->k;
        for (int r = 0; r < k * k; r++)
            C->Lam[r] = (1 - a) * C->Lam0[r] + a * C->Hs[r];
        memcpy(C->R, C->Lam, sizeof(double) * k * k);
        int info = vb_chol(k, C->R, k);
        if (info != 0) return vb_lapack_status(info);
        double *dl = S->u;
        memcpy(dl, C->gv, sizeof(double) * k);
        vb_chol_solve(k, C->R, k, dl);
        for (int r = 0; r < k; r++) {
            pred += 0.5 * C->gv[r] * dl[r];
            S->mu[C->a + r] = C->mu0[r] + a * dl[r];
        }
        memcpy(C->Sig, C->R, sizeof(double) * k * k);
        info = vb_chol_inv(k, C->Sig, k);
        if (info != 0) return vb_lapack_status(info);
    }
    if (a == 1) S->pred += pred;
    cells_mv(S, S->mt, S->vt);
    double ll, kl;
    return elbo_at(S, S->mt, S->vt, value, &ll, &kl);
}

/* --------------------------------------------------------- partial path -- */
/*
 * The precision of q(beta, b) is Lambda = [[A, B], [B', blockdiag_j(Q_j) +
 * B'A^-1 B]] with B = [B_1 .. B_J] (B_j = [B_j1 .. B_jG], p x d_j each),
 * D_j = blockdiag_g(D_jg) and Q_j = D_j - B_j'A^-1 B_j: the family
 * q(beta | b) prod_j q(b_j), q(beta | b) = N(mu_beta - A^-1 B (b - m), A^-1),
 * q(b_j) = N(m_j, Q_j^-1).  Given the surrogate curvature H* (A*, B*_j, D*_j:
 * X'WX + P, X'W Z_j, Z_j'W Z_j + Om blockwise) its best member has exactly
 * these blocks; the cross-factor blocks Z_j'W Z_k never enter.  With
 * T_j = A - B_j D_j^-1 B_j' (p x p, the Schur complement of the two-block
 * arrowhead of factor j), Woodbury gives
 *   Q_j^-1 = D_j^-1 + D_j^-1 B_j' T_j^-1 B_j D_j^-1,
 *   Cov(beta) = sum_j T_j^-1 - (J - 1) A^-1,  Cov(beta, b_jg) = -T_j^-1 B_jg D_jg^-1,
 *   log|Lambda| = log|A| + sum_j (sum_g log|D_jg| + log|T_j| - log|A|),
 *   Var(eta_i) = x'A^-1 x (1 - J) + sum_j [z'D_jg^-1 z + u_j'T_j^-1 u_j],
 *                u_j = x - B_jg D_jg^-1 z,
 * and the step Lambda^-1 g by
 *   delta_bj = Q_j^-1 (g_bj - B_j'A^-1 g_beta),  delta_beta = A^-1 (g_beta - B delta_b).
 * All of it is O(sum_j G_j (d_j^3 + p d_j^2) + J p^3) per factorisation.
 */

/* Lambda* (As, Bs, Ds) and the gradient at the current q; back up Lambda. */
static int partial_prepare(gstate *S) {
    glmm_model *G = S->G;
    vb_glm *M = S->M;
    int n = S->n, p = S->p;
    memcpy(S->mu0, S->mu, sizeof(double) * S->D);
    memcpy(S->A0, S->Ac, sizeof(double) * p * p);
    memcpy(S->B0, S->Bc, sizeof(double) * S->nB);
    memcpy(S->D0, S->Dc, sizeof(double) * S->nDD);
    double *w = S->vt;
    for (int i = 0; i < n; i++)
        w[i] = -2 * S->dv[i];
    int st = vb_xtwx(n, p, M->X, n, w, S->work, S->As);
    if (st != VB_OK) return st;
    for (int k = 0; k < p; k++) {
        S->As[k + (size_t)k * p] += 1.0 / (M->pscale[k] * M->pscale[k]);
        double gk = -(S->mu[k] - M->ploc[k]) / (M->pscale[k] * M->pscale[k]);
        for (int i = 0; i < n; i++)
            gk += M->X[i + (size_t)k * n] * S->dm[i];
        S->gvec[k] = gk;
    }
    memset(S->Bs, 0, sizeof(double) * S->nB);
    for (int j = 0; j < G->J; j++) {
        glmm_factor *F = G->F + j;
        int d = F->d;
        size_t pd = (size_t)p * d, dd = (size_t)d * d;
        for (int g = 0; g < F->G; g++) {
            double *Dg = S->Ds + S->dof[j] + g * dd, *Bg = S->Bs + S->bo[j] + g * pd,
                   *gg = S->gvec + F->off + (size_t)g * d;
            const double *mg = S->mu + F->off + (size_t)g * d;
            for (size_t r = 0; r < dd; r++)
                Dg[r] = F->Om[r];
            for (int a = 0; a < d; a++) {
                gg[a] = 0;
                for (int b = 0; b < d; b++)
                    gg[a] -= F->Om[a + b * d] * mg[b];
            }
            for (int t = F->gstart[g]; t < F->gstart[g + 1]; t++) {
                int i = F->ord[t];
                for (int a = 0; a < d; a++) {
                    double za = F->Z[i + (size_t)a * n], wz = w[i] * za;
                    gg[a] += za * S->dm[i];
                    for (int b = 0; b < d; b++)
                        Dg[a + b * d] += wz * F->Z[i + (size_t)b * n];
                    for (int k = 0; k < p; k++)
                        Bg[k + (size_t)a * p] += wz * M->X[i + (size_t)k * n];
                }
            }
        }
    }
    return VB_OK;
}

/* Factor the current (Ac, Bc, Dc): RA, Ai, Rg, K, Tc, Ti, Sb, Sg, ldet. */
static int partial_factor(gstate *S) {
    glmm_model *G = S->G;
    int p = S->p, J = G->J;
    size_t pp = (size_t)p * p;
    memcpy(S->RA, S->Ac, sizeof(double) * pp);
    int info = vb_chol(p, S->RA, p);
    if (info != 0) return vb_lapack_status(info);
    double ldA = vb_chol_logdet(p, S->RA, p), ld = ldA;
    memcpy(S->Ai, S->RA, sizeof(double) * pp);
    info = vb_chol_inv(p, S->Ai, p);
    if (info != 0) return vb_lapack_status(info);
    for (size_t r = 0; r < pp; r++)
        S->Sb[r] = -(J - 1) * S->Ai[r];
    double *KS = S->u; /* d x p scratch */
    for (int j = 0; j < J; j++) {
        glmm_factor *F = G->F + j;
        int d = F->d;
        size_t pd = (size_t)p * d, dd = (size_t)d * d;
        double *Tc = S->Tc + j * pp, *Ti = S->Ti + j * pp;
        memcpy(Tc, S->Ac, sizeof(double) * pp);
        for (int g = 0; g < F->G; g++) {
            double *R = S->Rg + S->dof[j] + g * dd, *Kg = S->K + S->bo[j] + g * pd,
                   *Bg = S->Bc + S->bo[j] + g * pd;
            memcpy(R, S->Dc + S->dof[j] + g * dd, sizeof(double) * dd);
            info = vb_chol(d, R, d);
            if (info != 0) return vb_lapack_status(info);
            ld += vb_chol_logdet(d, R, d);
            /* K_g = D_g^-1 B_g' (d x p) */
            for (int k = 0; k < p; k++) {
                for (int a = 0; a < d; a++)
                    Kg[a + (size_t)k * d] = Bg[k + (size_t)a * p];
                vb_chol_solve(d, R, d, Kg + (size_t)k * d);
            }
            for (int k = 0; k < p; k++)
                for (int l = 0; l <= k; l++) {
                    double s = 0;
                    for (int a = 0; a < d; a++)
                        s += Bg[k + (size_t)a * p] * Kg[a + (size_t)l * d];
                    Tc[k + (size_t)l * p] -= s;
                    if (l != k) Tc[l + (size_t)k * p] -= s;
                }
        }
        info = vb_chol(p, Tc, p);
        if (info != 0) return vb_lapack_status(info);
        ld += vb_chol_logdet(p, Tc, p) - ldA;
        memcpy(Ti, Tc, sizeof(double) * pp);
        info = vb_chol_inv(p, Ti, p);
        if (info != 0) return vb_lapack_status(info);
        for (size_t r = 0; r < pp; r++)
            S->Sb[r] += Ti[r];
        /* marginal S_g = D_g^-1 + K_g T^-1 K_g' */
        for (int g = 0; g < F->G; g++) {
            double *Sg = S->Sg + S->dof[j] + g * dd, *Kg = S->K + S->bo[j] + g * pd,
                   *R = S->Rg + S->dof[j] + g * dd;
            memcpy(Sg, R, sizeof(double) * dd);
            info = vb_chol_inv(d, Sg, d);
            if (info != 0) return vb_lapack_status(info);
            for (int a = 0; a < d; a++)
                for (int l = 0; l < p; l++) {
                    double s = 0;
                    for (int k = 0; k < p; k++)
                        s += Kg[a + (size_t)k * d] * Ti[k + (size_t)l * p];
                    KS[a + (size_t)l * d] = s;
                }
            for (int a = 0; a < d; a++)
                for (int b = 0; b < d; b++) {
                    double s = 0;
                    for (int l = 0; l < p; l++)
                        s += KS[a + (size_t)l * d] * Kg[b + (size_t)l * d];
                    Sg[a + b * d] += s;
                }
        }
    }
    S->ldet = -ld;
    return VB_OK;
}

static void partial_mv(gstate *S, double *m, double *v) {
    glmm_model *G = S->G;
    vb_glm *M = S->M;
    int n = S->n, p = S->p, J = G->J;
    size_t pp = (size_t)p * p;
    double *u = S->val, *zD = S->val + p, *x = S->val + 2 * (size_t)p + S->dmax;
    for (int i = 0; i < n; i++) {
        double mi = M->off[i], vi = 0;
        for (int k = 0; k < p; k++) {
            x[k] = M->X[i + (size_t)k * n];
            mi += x[k] * S->mu[k];
        }
        if (J > 1) {
            double q = 0;
            for (int k = 0; k < p; k++) {
                double s = 0;
                for (int l = 0; l < p; l++)
                    s += S->Ai[k + (size_t)l * p] * x[l];
                q += x[k] * s;
            }
            vi = (1 - J) * q;
        }
        for (int j = 0; j < J; j++) {
            const glmm_factor *F = G->F + j;
            int d = F->d, g = F->grp[i];
            size_t pd = (size_t)p * d, dd = (size_t)d * d;
            const double *Kg = S->K + S->bo[j] + g * pd, *Rg = S->Rg + S->dof[j] + g * dd,
                         *mg = S->mu + F->off + (size_t)g * d, *Ti = S->Ti + j * pp;
            for (int a = 0; a < d; a++)
                mi += F->Z[i + (size_t)a * n] * mg[a];
            /* z' D_g^-1 z = || R_g^-T z ||^2 */
            for (int a = 0; a < d; a++) {
                double s = F->Z[i + (size_t)a * n];
                for (int b = 0; b < a; b++)
                    s -= Rg[b + a * d] * zD[b];
                zD[a] = s / Rg[a + a * d];
                vi += zD[a] * zD[a];
            }
            for (int k = 0; k < p; k++) {
                double s = x[k];
                for (int a = 0; a < d; a++)
                    s -= Kg[a + (size_t)k * d] * F->Z[i + (size_t)a * n];
                u[k] = s;
            }
            for (int k = 0; k < p; k++) {
                double s = 0;
                for (int l = 0; l < p; l++)
                    s += Ti[k + (size_t)l * p] * u[l];
                vi += u[k] * s;
            }
        }
        m[i] = mi;
        v[i] = vi;
    }
}

static void partial_blend(gstate *S, double a) {
    size_t pp = (size_t)S->p * S->p;
    for (size_t r = 0; r < pp; r++)
        S->Ac[r] = (1 - a) * S->A0[r] + a * S->As[r];
    for (size_t r = 0; r < S->nB; r++)
        S->Bc[r] = (1 - a) * S->B0[r] + a * S->Bs[r];
    for (size_t r = 0; r < S->nDD; r++)
        S->Dc[r] = (1 - a) * S->D0[r] + a * S->Ds[r];
}

static int partial_try(double a, void *ctx, double *value) {
    gstate *S = (gstate *)ctx;
    glmm_model *G = S->G;
    int p = S->p;
    size_t pp = (size_t)p * p;
    partial_blend(S, a);
    int st = partial_factor(S);
    if (st != VB_OK) return st;
    /* delta = Lambda_a^-1 g (see the block comment above) */
    double *h0 = S->u, *hb = S->u + p, *acc = S->u + 2 * (size_t)p, *sol = S->u + 3 * (size_t)p;
    double *dl = S->mt; /* mt is free until partial_mv */
    memcpy(h0, S->gvec, sizeof(double) * p);
    vb_chol_solve(p, S->RA, p, h0);
    memcpy(hb, S->gvec, sizeof(double) * p);
    for (int j = 0; j < G->J; j++) {
        glmm_factor *F = G->F + j;
        int d = F->d;
        size_t pd = (size_t)p * d, dd = (size_t)d * d;
        const double *Ti = S->Ti + j * pp;
        memset(acc, 0, sizeof(double) * p);
        for (int g = 0; g < F->G; g++) {
            const double *Bg = S->Bc + S->bo[j] + g * pd, *gg = S->gvec + F->off + (size_t)g * d;
            double *dg = dl + F->off + (size_t)g * d;
            for (int b = 0; b < d; b++) {
                double s = gg[b];
                for (int k = 0; k < p; k++)
                    s -= Bg[k + (size_t)b * p] * h0[k];
                dg[b] = s;
            }
            vb_chol_solve(d, S->Rg + S->dof[j] + g * dd, d, dg);
            for (int b = 0; b < d; b++)
                for (int k = 0; k < p; k++)
                    acc[k] += Bg[k + (size_t)b * p] * dg[b];
        }
        for (int k = 0; k < p; k++) {
            double s = 0;
            for (int l = 0; l < p; l++)
                s += Ti[k + (size_t)l * p] * acc[l];
            sol[k] = s;
        }
        for (int g = 0; g < F->G; g++) {
            const double *Kg = S->K + S->bo[j] + g * pd, *Bg = S->Bc + S->bo[j] + g * pd;
            double *dg = dl + F->off + (size_t)g * d;
            for (int b = 0; b < d; b++)
                for (int k = 0; k < p; k++)
                    dg[b] += Kg[b + (size_t)k * d] * sol[k];
            for (int b = 0; b < d; b++)
                for (int k = 0; k < p; k++)
                    hb[k] -= Bg[k + (size_t)b * p] * dg[b];
        }
    }
    vb_chol_solve(p, S->RA, p, hb);
    memcpy(dl, hb, sizeof(double) * p);
    double pred = 0;
    for (int r = 0; r < S->D; r++) {
        pred += 0.5 * S->gvec[r] * dl[r];
        S->mu[r] = S->mu0[r] + a * dl[r];
    }
    if (a == 1) S->pred += pred;
    partial_mv(S, S->mt, S->vt);
    double ll, kl;
    return elbo_at(S, S->mt, S->vt, value, &ll, &kl);
}

/* ------------------------------------------------ parameter expansion -- */
/*
 * With few observations per group, q(b_j) and q(Sigma_j) pull on each other
 * and the plain sweep converges linearly at a rate near 1 (the EM problem of
 * variance components).  After each sweep, for each factor j (d_j <= PX_DMAX),
 * a transformation step moves along the slow direction: for a d x d matrix R
 *   q(b_jg) -> the law of R b_jg (means R m_g, covariances R S_g R', Cov(beta,
 *   b_jg) -> Cov(beta, b_jg) R'; precision blocks B_g R^-1, R^-T D_g R^-1),
 * which stays in every family (R diagonal for meanfield), followed by the
 * exact q(Sigma), q(a) updates.  R maximises a local model of the ELBO:
 * eta_i depends on R through m_i = ... + z'R m_g and v_i = z'R S_g R'z +
 * 2 e_i'R'z + ... (e_i = Cov(b_jg, other coefficients) c_i), so with dm, dv,
 * w = -2 dv at R = I (the quantities of the Newton step)
 *   phi(R) = <Gm, R> - 1/2 r'Hm r + sum_g tr(R'N_g R S_g) + 2 <Q, R>
 *          + G log|R| - sum_c (mq_c / 2) log|Psi0_c + (R E R')_cc|,
 * r = vec(R - I), Gm = sum_i dm_i z m_g', Hm = sum_g (m_g m_g') (x) W_g,
 * W_g = sum_i w_i z z', N_g = sum_i dv_i z z', Q = sum_i dv_i z e_i'; the last
 * term is the ELBO of the covariance factors at their optimum given E(R)
 * (Psi0 = 2 nu diag(E 1/a) or Psi; -tr(Om R E R')/2 for a fixed Sigma).
 * phi matches the ELBO's value and gradient at R = I, and is maximised by a
 * damped Newton iteration (d^2 parameters).  The step is taken only when the
 * ELBO itself increases (R = I + a (R* - I), a = 1, 1/2, 1/4), so the sweep
 * stays monotone; its fixed points are those of the plain sweep.
 * Cost per factor: one pass over the observations, O(G_j d_j^4) and one
 * refactorisation per trial.  (The transformation is that of parameter-
 * expanded EM/VB, Liu, Rubin & Wu 1998; Qi & Jaakkola 2006, taken here as a
 * monotone line search on the original ELBO.)
 */
#define PX_DMAX 6

typedef struct {
    int d, dd, G, J, mf;
    double *Gm, *Hm, *K2, *Q, *E, *I; /* statistics at R = I */
    const glmm_model *M;
    int fac;
    double *Mt, *Tm, *Rw; /* scratch */
} pxmodel;

/* small dense inverse (Gauss-Jordan, partial pivoting); returns 0 when singular */
static int small_inv(int d, const double *A, double *Ai, double *work, double *logabsdet,
                     int *sign) {
    double *T = work;
    memcpy(T, A, sizeof(double) * d * d);
    for (int i = 0; i < d * d; i++)
        Ai[i] = 0;
    for (int i = 0; i < d; i++)
        Ai[i + i * d] = 1;
    double ld = 0;
    int sg = 1;
    for (int c = 0; c < d; c++) {
        int piv = c;
        for (int r = c + 1; r < d; r++)
            if (fabs(T[r + c * d]) > fabs(T[piv + c * d])) piv = r;
        double pv = T[piv + c * d];
        if (!(fabs(pv) > 0) || !R_FINITE(pv)) return 0;
        if (piv != c) {
            sg = -sg;
            for (int k = 0; k < d; k++) {
                double t = T[c + k * d];
                T[c + k * d] = T[piv + k * d];
                T[piv + k * d] = t;
                t = Ai[c + k * d];
                Ai[c + k * d] = Ai[piv + k * d];
                Ai[piv + k * d] = t;
            }
        }
        if (pv < 0) sg = -sg;
        ld += log(fabs(pv));
        for (int k = 0; k < d; k++) {
            T[c + k * d] /= pv;
            Ai[c + k * d] /= pv;
        }
        for (int r = 0; r < d; r++) {
            if (r == c) continue;
            double f = T[r + c * d];
            if (f == 0) continue;
            for (int k = 0; k < d; k++) {
                T[r + k * d] -= f * T[c + k * d];
                Ai[r + k * d] -= f * Ai[c + k * d];
            }
        }
    }
    *logabsdet = ld;
    *sign = sg;
    return 1;
}

/* phi(R) - phi(I) and, if grad != NULL, its gradient (d x d) */
static double px_phi(const pxmodel *P, const double *R, double *grad) {
    int d = P->d, dd = P->dd;
    const glmm_model *G = P->M;
    const glmm_factor *F = G->F + P->fac;
    double *Ri = P->Mt, *T = P->Tm, *W = P->Rw, ld;
    int sg;
    if (!small_inv(d, R, Ri, T, &ld, &sg) || sg < 0) return R_NegInf;
    double f = 0;
    /* linear and quadratic terms */
    double *r = W; /* dd */
    double *Hr = W + dd, *KR = W + 2 * dd;
    for (int k = 0; k < dd; k++)
        r[k] = R[k] - P->I[k];
    for (int k = 0; k < dd; k++) {
        double s = 0, t = 0;
        for (int l = 0; l < dd; l++) {
            s += P->Hm[k + (size_t)l * dd] * r[l];
            t += P->K2[k + (size_t)l * dd] * R[l];
        }
        Hr[k] = s;
        KR[k] = t;
    }
    double f0 = 0;
    for (int k = 0; k < dd; k++) {
        f += (P->Gm[k] + 2 * P->Q[k]) * r[k] - 0.5 * r[k] * Hr[k] + R[k] * KR[k];
        double t = 0;
        for (int l = 0; l < dd; l++)
            t += P->K2[k + (size_t)l * dd] * P->I[l];
        f0 += P->I[k] * t;
    }
    f -= f0;
    f += P->G * ld;
    if (grad)
        for (int a = 0; a < d; a++)
            for (int b = 0; b < d; b++) {
                int k = a + b * d;
                grad[k] = P->Gm[k] + 2 * P->Q[k] - Hr[k] + 2 * KR[k] + P->G * Ri[b + a * d];
            }
    /* covariance factors: RE = R E, ERE = R E R' */
    double *RE = W + 3 * dd, *ERE = W + 4 * dd, *Mc = W + 5 * dd, *Mw = W + 6 * dd;
    for (int a = 0; a < d; a++)
        for (int b = 0; b < d; b++) {
            double s = 0;
            for (int k = 0; k < d; k++)
                s += R[a + k * d] * P->E[k + b * d];
            RE[a + b * d] = s;
        }
    for (int a = 0; a < d; a++)
        for (int b = 0; b < d; b++) {
            double s = 0;
            for (int k = 0; k < d; k++)
                s += RE[a + k * d] * R[b + k * d];
            ERE[a + b * d] = s;
        }
    for (int c = 0; c < G->ncov; c++) {
        const glmm_cov *C = G->C + c;
        if (C->factor != P->fac) continue;
        int dc = C->d, s0 = C->start;
        if (C->type == GLMM_FIXED) {
            for (int a = 0; a < dc; a++)
                for (int b = 0; b < dc; b++) {
                    double om = C->fixOm[a + b * dc];
                    f -= 0.5 * om * (ERE[(s0 + b) + (s0 + a) * d] - P->E[(s0 + b) + (s0 + a) * d]);
                }
            if (grad)
                for (int a = 0; a < dc; a++)
                    for (int b = 0; b < d; b++) {
                        double s = 0;
                        for (int k = 0; k < dc; k++)
                            s += C->fixOm[a + k * dc] * RE[(s0 + k) + b * d];
                        grad[(s0 + a) + b * d] -= s;
                    }
            continue;
        }
        double mq = C->type == GLMM_HW ? C->nu + dc - 1 + F->G : C->nu + F->G, l1, l0;
        for (int pass = 0; pass < 2; pass++) {
            const double *EE = pass ? P->E : ERE;
            for (int a = 0; a < dc; a++)
                for (int b = 0; b < dc; b++) {
                    double psi = C->type == GLMM_HW ? (a == b ? 2 * C->nu * C->aA[a] / C->aB[a] : 0)
                                                    : C->scale[a + b * dc];
                    Mc[a + b * dc] = psi + EE[(s0 + a) + (s0 + b) * d];
                }
            if (!small_inv(dc, Mc, Mw, T, pass ? &l0 : &l1, &sg) || sg < 0) return R_NegInf;
            if (pass == 0 && grad)
                for (int a = 0; a < dc; a++)
                    for (int b = 0; b < d; b++) {
                        double s = 0;
                        for (int k = 0; k < dc; k++)
                            s += Mw[a + k * dc] * RE[(s0 + k) + b * d];
                        grad[(s0 + a) + b * d] -= mq * s;
                    }
        }
        f -= 0.5 * mq * (l1 - l0);
    }
    if (grad && P->mf)
        for (int a = 0; a < d; a++)
            for (int b = 0; b < d; b++)
                if (a != b) grad[a + b * d] = 0;
    return R_FINITE(f) ? f : R_NegInf;
}

/* maximise phi from R = I: damped Newton with a finite-difference Hessian */
static double px_maximise(const pxmodel *P, double *R, double *work) {
    int d = P->d, dd = P->dd, nf = 0;
    int free_[PX_DMAX * PX_DMAX];
    for (int a = 0; a < d; a++)
        for (int b = 0; b < d; b++)
            if (!P->mf || a == b) free_[nf++] = a + b * d;
    double *g = work, *g1 = work + dd, *g2 = work + 2 * dd, *H = work + 3 * dd,
           *Rt = H + (size_t)dd * dd, *step = Rt + dd, *Hd = step + dd;
    memcpy(R, P->I, sizeof(double) * dd);
    double f = 0;
    for (int it = 0; it < 30; it++) {
        px_phi(P, R, g);
        double gn = 0;
        for (int k = 0; k < nf; k++)
            gn += g[free_[k]] * g[free_[k]];
        if (!(gn > 1e-24)) break;
        for (int k = 0; k < nf; k++) {
            double h = 1e-5 * (1 + fabs(R[free_[k]]));
            memcpy(Rt, R, sizeof(double) * dd);
            Rt[free_[k]] += h;
            px_phi(P, Rt, g1);
            Rt[free_[k]] -= 2 * h;
            px_phi(P, Rt, g2);
            for (int l = 0; l < nf; l++)
                H[l + k * nf] = -(g1[free_[l]] - g2[free_[l]]) / (2 * h);
        }
        for (int k = 0; k < nf; k++)
            for (int l = 0; l < k; l++)
                H[l + k * nf] = H[k + l * nf] = 0.5 * (H[l + k * nf] + H[k + l * nf]);
        double lam = 0, tr = 0, best = R_NegInf;
        for (int k = 0; k < nf; k++)
            tr += fabs(H[k + k * nf]);
        tr = tr / nf + 1e-12;
        int ok = 0;
        for (int tries = 0; tries < 20 && !ok; tries++) {
            memcpy(Hd, H, sizeof(double) * nf * nf);
            for (int k = 0; k < nf; k++)
                Hd[k + k * nf] += lam;
            if (vb_chol(nf, Hd, nf) == 0) {
                for (int k = 0; k < nf; k++)
                    step[k] = g[free_[k]];
                vb_chol_solve(nf, Hd, nf, step);
                memcpy(Rt, R, sizeof(double) * dd);
                for (int k = 0; k < nf; k++)
                    Rt[free_[k]] += step[k];
                double ft = px_phi(P, Rt, NULL);
                if (ft > f) {
                    best = ft;
                    ok = 1;
                }
            }
            if (!ok) lam = lam > 0 ? 10 * lam : 1e-4 * tr;
        }
        if (!ok) break;
        memcpy(R, Rt, sizeof(double) * dd);
        double gain = best - f;
        f = best;
        if (gain < 1e-14 * (1 + fabs(f))) break;
    }
    return f;
}

/* Cov(b_jg, b_jg) into Sg and e = Cov(b_jg, rest) c_rest for the cells path */
static void cells_group(const gstate *S, int j, int g, double *Sg) {
    const glmm_factor *F = S->G->F + j;
    int d = F->d, b0 = F->off + g * F->d;
    for (int a = 0; a < d; a++)
        for (int b = 0; b < d; b++) {
            int c1 = S->cellof[b0 + a], c2 = S->cellof[b0 + b];
            const cell *C = S->cells + c1;
            Sg[a + b * d] = c1 == c2 ? C->Sig[(b0 + a - C->a) + (size_t)(b0 + b - C->a) * C->k] : 0;
        }
}

static void cells_cross(const gstate *S, int j, int g, int i, double *e) {
    const glmm_factor *F = S->G->F + j;
    int d = F->d, b0 = F->off + g * F->d;
    int nz = obs_row(S, i, S->idx, S->val);
    for (int a = 0; a < d; a++) {
        int ca = S->cellof[b0 + a];
        const cell *C = S->cells + ca;
        double s = 0;
        for (int r = 0; r < nz; r++) {
            int pos = S->idx[r];
            if ((pos >= b0 && pos < b0 + d) || S->cellof[pos] != ca) continue;
            s += C->Sig[(b0 + a - C->a) + (size_t)(pos - C->a) * C->k] * S->val[r];
        }
        e[a] = s;
    }
}

/* statistics of phi for factor j at the current q (dm, dv current) */
static void px_stats(gstate *S, int j, pxmodel *P) {
    glmm_model *G = S->G;
    glmm_factor *F = G->F + j;
    vb_glm *M = S->M;
    int n = S->n, p = S->p, d = F->d, dd = d * d;
    int partial = G->approx == GLMM_PARTIAL;
    memset(P->Gm, 0, sizeof(double) * dd);
    memset(P->Q, 0, sizeof(double) * dd);
    memset(P->Hm, 0, sizeof(double) * dd * dd);
    memset(P->K2, 0, sizeof(double) * dd * dd);
    memcpy(P->E, F->E, sizeof(double) * dd);
    double *Sg = S->pxbuf, *Wg = Sg + dd, *Ng = Wg + dd, *gz = Ng + dd, *e = gz + d, *tx = e + d,
           *x = tx + p;
    for (int g = 0; g < F->G; g++) {
        const double *mg = S->mu + F->off + (size_t)g * d, *Kg = NULL;
        if (partial) {
            memcpy(Sg, S->Sg + S->dof[j] + (size_t)g * dd, sizeof(double) * dd);
            Kg = S->K + S->bo[j] + (size_t)g * p * d;
        } else
            cells_group(S, j, g, Sg);
        memset(Wg, 0, sizeof(double) * dd);
        memset(Ng, 0, sizeof(double) * dd);
        memset(gz, 0, sizeof(double) * d);
        for (int t = F->gstart[g]; t < F->gstart[g + 1]; t++) {
            int i = F->ord[t];
            double dmi = S->dm[i], dvi = S->dv[i], wi = -2 * dvi;
            if (partial) {
                /* e = Cov(b_g, beta) x = -K_g T^-1 x */
                const double *Ti = S->Ti + (size_t)j * p * p;
                for (int k = 0; k < p; k++)
                    x[k] = M->X[i + (size_t)k * n];
                for (int k = 0; k < p; k++) {
                    double s = 0;
                    for (int l = 0; l < p; l++)
                        s += Ti[k + (size_t)l * p] * x[l];
                    tx[k] = s;
                }
                for (int a = 0; a < d; a++) {
                    double s = 0;
                    for (int k = 0; k < p; k++)
                        s += Kg[a + (size_t)k * d] * tx[k];
                    e[a] = -s;
                }
            } else
                cells_cross(S, j, g, i, e);
            for (int a = 0; a < d; a++) {
                double za = F->Z[i + (size_t)a * n];
                gz[a] += dmi * za;
                for (int b = 0; b < d; b++) {
                    double zb = F->Z[i + (size_t)b * n];
                    Wg[a + b * d] += wi * za * zb;
                    Ng[a + b * d] += dvi * za * zb;
                    P->Q[a + b * d] += dvi * za * e[b];
                }
            }
        }
        for (int a = 0; a < d; a++)
            for (int b = 0; b < d; b++)
                P->Gm[a + b * d] += gz[a] * mg[b];
        /* Hm += (m m') (x) W_g ; K2[(a,b),(c,e)] += N_ac S_be */
        for (int b = 0; b < d; b++)
            for (int a = 0; a < d; a++)
                for (int e2 = 0; e2 < d; e2++)
                    for (int c = 0; c < d; c++) {
                        size_t k = a + b * d, l = c + e2 * d;
                        P->Hm[k + l * dd] += mg[b] * mg[e2] * Wg[a + c * d];
                        P->K2[k + l * dd] += Ng[a + c * d] * Sg[b + e2 * d];
                    }
    }
    /* K2 is used as vec(R)'K2 vec(R): symmetrise */
    for (int k = 0; k < dd; k++)
        for (int l = 0; l < k; l++)
            P->K2[k + l * dd] = P->K2[l + k * dd] = 0.5 * (P->K2[k + l * dd] + P->K2[l + k * dd]);
}

/* refactor every cell from its Lam */
static int cells_refactor(gstate *S) {
    for (int c = 0; c < S->ncell; c++) {
        cell *C = S->cells + c;
        size_t kk = (size_t)C->k * C->k;
        memcpy(C->R, C->Lam, sizeof(double) * kk);
        int info = vb_chol(C->k, C->R, C->k);
        if (info != 0) return vb_lapack_status(info);
        memcpy(C->Sig, C->R, sizeof(double) * kk);
        info = vb_chol_inv(C->k, C->Sig, C->k);
        if (info != 0) return vb_lapack_status(info);
    }
    return VB_OK;
}

/* apply b_jg -> R b_jg to the state (Ri = R^-1); refactor, recompute m, v */
static int px_apply(gstate *S, int j, const double *R, const double *Ri) {
    glmm_model *G = S->G;
    glmm_factor *F = G->F + j;
    int p = S->p, d = F->d, dd = d * d;
    double *t = S->pxbuf; /* max(d, p d) */
    for (int g = 0; g < F->G; g++) {
        double *mg = S->mu + F->off + (size_t)g * d;
        for (int a = 0; a < d; a++) {
            double s = 0;
            for (int b = 0; b < d; b++)
                s += R[a + b * d] * mg[b];
            t[a] = s;
        }
        memcpy(mg, t, sizeof(double) * d);
    }
    int st;
    if (G->approx == GLMM_PARTIAL) {
        for (int g = 0; g < F->G; g++) {
            double *Bg = S->Bc + S->bo[j] + (size_t)g * p * d,
                   *Dg = S->Dc + S->dof[j] + (size_t)g * dd;
            for (int k = 0; k < p; k++)
                for (int b = 0; b < d; b++) {
                    double s = 0;
                    for (int a = 0; a < d; a++)
                        s += Bg[k + (size_t)a * p] * Ri[a + b * d];
                    t[k + (size_t)b * p] = s;
                }
            memcpy(Bg, t, sizeof(double) * p * d);
            /* D <- Ri' D Ri */
            for (int a = 0; a < d; a++)
                for (int b = 0; b < d; b++) {
                    double s = 0;
                    for (int c = 0; c < d; c++)
                        s += Dg[a + c * d] * Ri[c + b * d];
                    t[a + b * d] = s;
                }
            for (int a = 0; a < d; a++)
                for (int b = 0; b < d; b++) {
                    double s = 0;
                    for (int c = 0; c < d; c++)
                        s += Ri[c + a * d] * t[c + b * d];
                    Dg[a + b * d] = s;
                }
            for (int a = 0; a < d; a++)
                for (int b = 0; b < a; b++)
                    Dg[a + b * d] = Dg[b + a * d] = 0.5 * (Dg[a + b * d] + Dg[b + a * d]);
        }
        st = partial_factor(S);
        if (st != VB_OK) return st;
        partial_mv(S, S->m, S->v);
        return VB_OK;
    }
    for (int c = 0; c < S->ncell; c++) {
        cell *C = S->cells + c;
        int k = C->k;
        if (k == 1) { /* meanfield coordinate (R diagonal) */
            int pos = C->a;
            if (pos >= F->off && pos < F->off + F->G * d) {
                int a = (pos - F->off) % d;
                C->Lam[0] /= R[a + a * d] * R[a + a * d];
            }
            continue;
        }
        for (int g = 0; g < F->G; g++) {
            int b0 = F->off + g * d - C->a;
            if (b0 < 0 || b0 + d > k) continue;
            /* rows: Lam[b0.., :] <- Ri' Lam[b0.., :]; columns likewise */
            for (int col = 0; col < k; col++) {
                for (int a = 0; a < d; a++) {
                    double s = 0;
                    for (int c2 = 0; c2 < d; c2++)
                        s += Ri[c2 + a * d] * C->Lam[(b0 + c2) + (size_t)col * k];
                    t[a] = s;
                }
                for (int a = 0; a < d; a++)
                    C->Lam[(b0 + a) + (size_t)col * k] = t[a];
            }
            for (int row = 0; row < k; row++) {
                for (int b = 0; b < d; b++) {
                    double s = 0;
                    for (int c2 = 0; c2 < d; c2++)
                        s += C->Lam[row + (size_t)(b0 + c2) * k] * Ri[c2 + b * d];
                    t[b] = s;
                }
                for (int b = 0; b < d; b++)
                    C->Lam[row + (size_t)(b0 + b) * k] = t[b];
            }
        }
        vb_symmetrize(k, C->Lam);
    }
    st = cells_refactor(S);
    if (st != VB_OK) return st;
    cells_mv(S, S->m, S->v);
    return VB_OK;
}

static void px_backup(gstate *S, int restore) {
    glmm_model *G = S->G;
    size_t D = S->D;
    if (restore)
        memcpy(S->mu, S->mupx, sizeof(double) * D);
    else
        memcpy(S->mupx, S->mu, sizeof(double) * D);
    if (G->approx == GLMM_PARTIAL) {
        if (restore) {
            memcpy(S->Bc, S->B0, sizeof(double) * S->nB);
            memcpy(S->Dc, S->D0, sizeof(double) * S->nDD);
        } else {
            memcpy(S->B0, S->Bc, sizeof(double) * S->nB);
            memcpy(S->D0, S->Dc, sizeof(double) * S->nDD);
        }
    } else
        for (int c = 0; c < S->ncell; c++) {
            cell *C = S->cells + c;
            size_t kk = (size_t)C->k * C->k;
            if (restore)
                memcpy(C->Lam, C->Lam0, sizeof(double) * kk);
            else
                memcpy(C->Lam0, C->Lam, sizeof(double) * kk);
        }
    for (int c = 0; c < G->ncov; c++) {
        glmm_cov *C = G->C + c;
        double *b = S->pxcov + c * S->pxcs;
        size_t dd = (size_t)C->d * C->d;
        if (restore) {
            C->mq = b[0];
            memcpy(C->Psiq, b + 1, sizeof(double) * dd);
            memcpy(C->aA, b + 1 + dd, sizeof(double) * C->d);
            memcpy(C->aB, b + 1 + dd + C->d, sizeof(double) * C->d);
        } else {
            b[0] = C->mq;
            memcpy(b + 1, C->Psiq, sizeof(double) * dd);
            memcpy(b + 1 + dd, C->aA, sizeof(double) * C->d);
            memcpy(b + 1 + dd + C->d, C->aB, sizeof(double) * C->d);
        }
    }
}

/* one expansion step per factor; *cur is the current ELBO (updated) */
static int px_sweep(gstate *S, double *cur) {
    glmm_model *G = S->G;
    for (int j = 0; j < G->J; j++) {
        glmm_factor *F = G->F + j;
        int d = F->d, dd = d * d;
        if (d > PX_DMAX) continue;
        if (vb_interrupted()) return VB_INTERRUPTED;
        pxmodel P;
        P.d = d;
        P.dd = dd;
        P.G = F->G;
        P.J = G->J;
        P.mf = G->approx == GLMM_MEANFIELD;
        P.M = G;
        P.fac = j;
        double *w = S->pxwork;
        P.Gm = w;
        P.Q = w + dd;
        P.E = w + 2 * dd;
        P.I = w + 3 * dd;
        P.Mt = w + 4 * dd;
        P.Tm = w + 5 * dd;
        P.Hm = w + 6 * dd;
        P.K2 = P.Hm + dd * dd;
        P.Rw = P.K2 + dd * dd; /* 7 dd */
        double *R = P.Rw + 7 * dd, *Ri = R + dd, *Ra = Ri + dd, *nw = Ra + dd;
        for (int k = 0; k < dd; k++)
            P.I[k] = 0;
        for (int a = 0; a < d; a++)
            P.I[a + a * d] = 1;
        int st = q_moments(S);
        if (st != VB_OK) return st;
        sum_obs(S, S->m, S->v, 1);
        px_stats(S, j, &P);
        double gain = px_maximise(&P, R, nw);
        if (!(gain > 1e-12 * (1 + fabs(*cur)))) continue;
        px_backup(S, 0);
        int accepted = 0;
        for (int h = 0; h < 3 && !accepted; h++) {
            double a = 1.0 / (1 << h), ld;
            int sg;
            for (int k = 0; k < dd; k++)
                Ra[k] = P.I[k] + a * (R[k] - P.I[k]);
            if (!small_inv(d, Ra, Ri, P.Tm, &ld, &sg) || sg < 0) continue;
            st = px_apply(S, j, Ra, Ri);
            double val = R_NegInf, ll, kl;
            if (st == VB_OK) st = q_moments(S);
            if (st == VB_OK) st = glmm_cov_update(G);
            if (st == VB_OK) st = elbo_at(S, S->m, S->v, &val, &ll, &kl);
            if (st == VB_OK && R_FINITE(val) && val > *cur) {
                accepted = 1;
                if (a == 1) S->pred += gain;
                *cur = val;
            } else {
                px_backup(S, 1);
                st = G->approx == GLMM_PARTIAL ? partial_factor(S) : cells_refactor(S);
                if (st != VB_OK) return st;
                st = glmm_cov_moments(G);
                if (st != VB_OK) return st;
            }
        }
        if (!accepted) {
            if (G->approx == GLMM_PARTIAL)
                partial_mv(S, S->m, S->v);
            else
                cells_mv(S, S->m, S->v);
        }
    }
    return VB_OK;
}

/* ----------------------------------------------------------- the loop -- */

static void gaussian_tau_update(gstate *S) {
    vb_glm *M = S->M;
    if (S->G->fix_tau || M->family != VB_GAUSSIAN) return;
    double ss = 0, neff = 0;
    for (int i = 0; i < S->n; i++) {
        if (M->wt[i] == 0) continue;
        double r = M->y[i] - S->m[i];
        ss += M->wt[i] * (r * r + S->v[i]);
        neff += 1;
    }
    S->A = M->a0 + 0.5 * neff;
    S->B = M->b0 + 0.5 * ss;
    set_tau(S);
}

static int glmm_run(gstate *S, const vb_settings *set, vb_trace *tr, int *iter, double *elbo,
                    double *ll, double *kl) {
    glmm_model *G = S->G;
    int partial = G->approx == GLMM_PARTIAL, st;
    vb_progress pr;
    vb_progress_init(&pr, set->quiet);
    st = glmm_cov_moments(G);
    if (st != VB_OK) return st;
    /* starting precision: the curvature at the starting means with v = 0
     * (the prior's alone would put v = x'S0 x, far too wide for exp()) */
    for (int i = 0; i < S->n; i++) {
        int nz = obs_row(S, i, S->idx, S->val);
        double mi = S->M->off[i];
        for (int r = 0; r < nz; r++)
            mi += S->val[r] * S->mu[S->idx[r]];
        S->m[i] = mi;
        S->v[i] = 0;
    }
    sum_obs(S, S->m, S->v, 1);
    if (partial) {
        st = partial_prepare(S);
        if (st != VB_OK) return st;
        partial_blend(S, 1);
    } else {
        for (int u = 0; u < S->nunit; u++) {
            cells_prepare(S, u);
            for (int c = S->ustart[u]; c < S->ustart[u + 1]; c++)
                memcpy(S->cells[c].Lam, S->cells[c].Hs,
                       sizeof(double) * S->cells[c].k * S->cells[c].k);
        }
    }
    if (partial) {
        st = partial_factor(S);
        if (st == VB_OK) partial_mv(S, S->m, S->v);
    } else {
        for (int c = 0; c < S->ncell && st == VB_OK; c++) {
            cell *C = S->cells + c;
            memcpy(C->R, C->Lam, sizeof(double) * C->k * C->k);
            int info = vb_chol(C->k, C->R, C->k);
            if (info != 0) return vb_lapack_status(info);
            memcpy(C->Sig, C->R, sizeof(double) * C->k * C->k);
            if (vb_chol_inv(C->k, C->Sig, C->k) != 0) return VB_NOT_PD;
        }
        cells_mv(S, S->m, S->v);
    }
    if (st != VB_OK) return st;
    double old;
    st = elbo_at(S, S->m, S->v, &old, ll, kl);
    if (st != VB_OK) return st;
    vb_trace_push(tr, old);
    *elbo = old;
    for (*iter = 1; *iter <= set->maxit; (*iter)++) {
        if (vb_interrupted()) return VB_INTERRUPTED;
        int all_ok = 1;
        double val = old, a;
        S->pred = 0;
        int nu = partial ? 1 : S->nunit;
        double cur = old; /* the ELBO at the current state, tracked through the units */
        for (int u = 0; u < nu; u++) {
            sum_obs(S, S->m, S->v, 1);
            if (partial) {
                st = partial_prepare(S);
                if (st != VB_OK) return st;
            } else {
                S->uc = u;
                cells_prepare(S, u);
            }
            st = vb_step_search(partial ? partial_try : cells_try, S, cur, &a, &val);
            if (st == VB_INTERRUPTED) return st;
            if (st != VB_OK) {
                all_ok = 0;
                double dummy;
                int st0 = partial ? partial_try(0, S, &dummy) : cells_try(0, S, &dummy);
                if (st0 != VB_OK) return st0;
                cur = dummy;
            } else
                cur = val;
            memcpy(S->m, S->mt, sizeof(double) * S->n);
            memcpy(S->v, S->vt, sizeof(double) * S->n);
        }
        /* covariance factors and the noise precision: exact coordinate updates */
        st = q_moments(S);
        if (st == VB_OK) st = glmm_cov_update(G);
        if (st != VB_OK) return st;
        gaussian_tau_update(S);
        double now;
        st = elbo_at(S, S->m, S->v, &now, ll, kl);
        if (st != VB_OK) return st;
        if (S->px) {
            st = px_sweep(S, &now); /* keeps now the ELBO of the state it leaves */
            if (st != VB_OK) return st;
        }
        vb_trace_push(tr, now);
        *elbo = now;
        vb_progress_tick(&pr, "vb() (hierarchical)", *iter, now);
        if (now < old - vb_step_slack(old) - 1e-9 * fabs(old)) return VB_DECREASED;
        if (!all_ok) return VB_STALLED;
        if (vb_tol_met(old, now, set->tol) && S->pred <= set->tol * (fabs(now) + set->tol))
            return VB_OK;
        old = now;
    }
    *iter = set->maxit;
    return VB_MAXIT;
}

/* ------------------------------------------------------- entry point -- */

static void add_cell(gstate *S, int *nc, int a, int k, int fac, int grp) {
    cell *C = S->cells + (*nc)++;
    C->a = a;
    C->k = k;
    C->fac = fac;
    C->grp = grp;
    size_t kk = (size_t)k * k;
    C->Lam = dalloc(kk);
    C->Sig = dalloc(kk);
    C->Hs = dalloc(kk);
    C->Lam0 = dalloc(kk);
    C->Sig0 = dalloc(kk);
    C->R = dalloc(kk);
    C->gv = dalloc(k);
    C->mu0 = dalloc(k);
}

SEXP C_glmm_cavi(SEXP model, SEXP init, SEXP control) {
    vb_glm M;
    glmm_model G;
    glmm_unpack(model, &M, &G);
    vb_settings set;
    vb_settings_read(control, &set);
    int n = M.n, p = M.p, D = G.D;
    if (G.approx == GLMM_FULLRANK && D > 5000)
        Rf_error("approx = \"fullrank\" is for small problems (at most 5000 coefficients)");
    const double *mu_init = vb_real_elt(init, "mu", D, "init");
    const double *tau_init = vb_real_elt(init, "tau", 2, "init");
    for (int r = 0; r < D; r++)
        if (!R_FINITE(mu_init[r])) Rf_error("'init$mu' must be finite");
    if (!(tau_init[0] > 0 && tau_init[1] > 0 && R_FINITE(tau_init[0]) && R_FINITE(tau_init[1])))
        Rf_error("'init$tau' needs a positive finite shape and rate");

    gstate S;
    memset(&S, 0, sizeof S);
    S.G = &G;
    S.M = &M;
    S.n = n;
    S.p = p;
    S.D = D;
    int width = p;
    for (int j = 0; j < G.J; j++)
        width += G.F[j].d;
    S.mu = dalloc(D);
    memcpy(S.mu, mu_init, sizeof(double) * D);
    S.A = tau_init[0];
    S.B = tau_init[1];
    set_tau(&S);
    double **nb[] = {&S.m, &S.v, &S.dm, &S.dv, &S.mt, &S.vt};
    for (int r = 0; r < 6; r++)
        *nb[r] = dalloc(n > D ? n : D);
    S.s2b = dalloc(p);
    S.idx = (int *)R_alloc(width + 1, sizeof(int));
    S.val = dalloc(2 * (size_t)width + p);
    if (G.approx == GLMM_PARTIAL) {
        size_t pp = (size_t)p * p, nB = 0, nDD = 0;
        S.bo = (size_t *)R_alloc(G.J + 1, sizeof(size_t));
        S.dof = (size_t *)R_alloc(G.J + 1, sizeof(size_t));
        S.dmax = 1;
        for (int j = 0; j < G.J; j++) {
            S.bo[j] = nB;
            S.dof[j] = nDD;
            nB += (size_t)p * G.F[j].d * G.F[j].G;
            nDD += (size_t)G.F[j].d * G.F[j].d * G.F[j].G;
            if (G.F[j].d > S.dmax) S.dmax = G.F[j].d;
        }
        S.nB = nB;
        S.nDD = nDD;
        double **b[] = {&S.A0, &S.As, &S.Ac, &S.Sb, &S.RA, &S.Ai};
        for (int r = 0; r < 6; r++)
            *b[r] = dalloc(pp);
        S.Tc = dalloc(pp * G.J);
        S.Ti = dalloc(pp * G.J);
        double **bb[] = {&S.B0, &S.Bs, &S.Bc, &S.K};
        for (int r = 0; r < 4; r++)
            *bb[r] = dalloc(nB);
        double **bd[] = {&S.D0, &S.Ds, &S.Dc, &S.Rg, &S.Sg};
        for (int r = 0; r < 5; r++)
            *bd[r] = dalloc(nDD);
        S.gvec = dalloc(D);
        S.mu0 = dalloc(D);
        size_t wk = (size_t)(n < VB_CHUNK ? n : VB_CHUNK) * p;
        S.work = dalloc(wk > pp ? wk : pp);
        S.u = dalloc((size_t)p * S.dmax + 4 * (size_t)p);
        S.val = dalloc(3 * (size_t)width + 3 * (size_t)p + S.dmax);
        /* starting precision: the prior's */
        for (int k = 0; k < p; k++)
            S.Ac[k + k * p] = 1.0 / (M.pscale[k] * M.pscale[k]);
        if (glmm_cov_moments(&G) != VB_OK)
            Rf_error("the starting covariance is not positive definite");
        for (int j = 0; j < G.J; j++)
            for (int g = 0; g < G.F[j].G; g++)
                memcpy(S.Dc + S.dof[j] + (size_t)g * G.F[j].d * G.F[j].d, G.F[j].Om,
                       sizeof(double) * G.F[j].d * G.F[j].d);
    } else {
        /* cells and units */
        int ncell = 0, nunit = 0, maxc, mf = G.approx == GLMM_MEANFIELD;
        if (G.approx == GLMM_FULLRANK)
            maxc = 1;
        else {
            maxc = mf ? p : 1;
            for (int j = 0; j < G.J; j++)
                maxc += (mf ? G.F[j].d : 1) * G.F[j].G;
        }
        S.cells = (cell *)R_alloc(maxc, sizeof(cell));
        S.ustart = (int *)R_alloc(maxc + 2, sizeof(int));
        if (G.approx == GLMM_FULLRANK) {
            S.ustart[nunit++] = 0;
            add_cell(&S, &ncell, 0, D, -1, 0);
        } else {
            if (p > 0) {
                if (mf)
                    for (int k = 0; k < p; k++) {
                        S.ustart[nunit++] = ncell;
                        add_cell(&S, &ncell, k, 1, -1, 0);
                    }
                else {
                    S.ustart[nunit++] = ncell;
                    add_cell(&S, &ncell, 0, p, -1, 0);
                }
            }
            for (int j = 0; j < G.J; j++) {
                glmm_factor *F = G.F + j;
                if (mf)
                    for (int k = 0; k < F->d; k++) {
                        S.ustart[nunit++] = ncell;
                        for (int g = 0; g < F->G; g++)
                            add_cell(&S, &ncell, F->off + g * F->d + k, 1, j, g);
                    }
                else {
                    S.ustart[nunit++] = ncell;
                    for (int g = 0; g < F->G; g++)
                        add_cell(&S, &ncell, F->off + g * F->d, F->d, j, g);
                }
            }
        }
        S.ustart[nunit] = ncell;
        S.ncell = ncell;
        S.nunit = nunit;
        int kmax = 1;
        for (int c = 0; c < ncell; c++)
            if (S.cells[c].k > kmax) kmax = S.cells[c].k;
        S.u = dalloc(kmax);
        if (glmm_cov_moments(&G) != VB_OK)
            Rf_error("the starting covariance is not positive definite");
        for (int c = 0; c < ncell; c++) {
            cell *C = S.cells + c;
            for (int r = 0; r < C->k; r++)
                for (int s = 0; s < C->k; s++)
                    C->Lam[r + (size_t)s * C->k] = prior_prec(&S, C->a + r, C->a + s);
        }
    }

    /* parameter expansion: scratch, backups, the cell of every coefficient */
    S.px = vb_flag_elt(model, "expand", "model");
    {
        int ddm = 1, pxcs = 1;
        for (int j = 0; j < G.J; j++)
            if (G.F[j].d <= PX_DMAX && G.F[j].d * G.F[j].d > ddm) ddm = G.F[j].d * G.F[j].d;
        for (int c = 0; c < G.ncov; c++)
            if (1 + G.C[c].d * G.C[c].d + 2 * G.C[c].d > pxcs)
                pxcs = 1 + G.C[c].d * G.C[c].d + 2 * G.C[c].d;
        int dmx = 1;
        for (int j = 0; j < G.J; j++)
            if (G.F[j].d > dmx) dmx = G.F[j].d;
        S.pxcs = pxcs;
        S.pxcov = dalloc((size_t)pxcs * G.ncov);
        S.pxwork = dalloc(8 * (size_t)ddm * ddm + 32 * (size_t)ddm);
        S.pxbuf =
            dalloc(4 * (size_t)dmx * dmx + 2 * (size_t)dmx + 2 * (size_t)p + (size_t)p * dmx + 16);
        S.mupx = dalloc(D);
        if (G.approx != GLMM_PARTIAL) {
            S.cellof = (int *)R_alloc(D + 1, sizeof(int));
            for (int c = 0; c < S.ncell; c++)
                for (int r = 0; r < S.cells[c].k; r++)
                    S.cellof[S.cells[c].a + r] = c;
        }
    }

    vb_trace tr;
    vb_trace_init(&tr);
    int it = 0;
    double elbo = R_NaN, ll = R_NaN, kl = R_NaN;
    int status = glmm_run(&S, &set, &tr, &it, &elbo, &ll, &kl);
    if (status != VB_INTERRUPTED && status != VB_LAPACK_ARG) {
        double e2;
        if (elbo_at(&S, S.m, S.v, &e2, &ll, &kl) != VB_OK) q_moments(&S);
    }

    /* outputs: beta covariance, group marginals (d x d x G per factor) */
    const char *names[] = {"mu",         "beta_cov",  "re_cov",     "Sigma_q", "a_q",
                           "tau",        "eta_mean",  "eta_var",    "elbo",    "loglik",
                           "kl",         "trace",     "iterations", "status",  "converged",
                           "Sigma_full", "cross_cov", "precision",  ""};
    int nprot = 0;
    SEXP out = vb_named_list(names, &nprot);
    SET_VECTOR_ELT(out, 0, vb_real_vec(D, S.mu));
    SEXP bc = PROTECT(Rf_allocMatrix(REALSXP, p, p));
    nprot++;
    double *bcv = REAL(bc);
    SEXP rc = PROTECT(Rf_allocVector(VECSXP, G.J));
    nprot++;
    for (int j = 0; j < G.J; j++) {
        glmm_factor *F = G.F + j;
        SET_VECTOR_ELT(rc, j, Rf_allocVector(REALSXP, (R_xlen_t)F->d * F->d * F->G));
    }
    memset(bcv, 0, sizeof(double) * p * p);
    SEXP xc = PROTECT(Rf_allocVector(VECSXP, G.J));
    nprot++;
    for (int j = 0; j < G.J; j++) {
        glmm_factor *F = G.F + j;
        size_t len = (size_t)p * F->d * F->G;
        SET_VECTOR_ELT(xc, j, Rf_allocVector(REALSXP, (R_xlen_t)len));
        memset(REAL(VECTOR_ELT(xc, j)), 0, sizeof(double) * len);
    }
    SET_VECTOR_ELT(out, 16, xc);
    if (G.approx == GLMM_PARTIAL) {
        /* Cov(beta, b_jg) = -T_j^-1 K_g' */
        SEXP pr = PROTECT(Rf_allocVector(VECSXP, 3)), pB = PROTECT(Rf_allocVector(VECSXP, G.J)),
             pD = PROTECT(Rf_allocVector(VECSXP, G.J));
        nprot += 3;
        for (int j = 0; j < G.J; j++) {
            glmm_factor *F = G.F + j;
            int d = F->d;
            size_t pd = (size_t)p * d, dd = (size_t)d * d;
            const double *Ti = S.Ti + (size_t)j * p * p;
            double *x = REAL(VECTOR_ELT(xc, j));
            for (int g = 0; g < F->G; g++) {
                const double *Kg = S.K + S.bo[j] + g * pd;
                for (int k = 0; k < p; k++)
                    for (int a = 0; a < d; a++) {
                        double s = 0;
                        for (int l = 0; l < p; l++)
                            s += Ti[k + (size_t)l * p] * Kg[a + (size_t)l * d];
                        x[k + (size_t)a * p + (size_t)g * pd] = -s;
                    }
            }
            memcpy(REAL(VECTOR_ELT(rc, j)), S.Sg + S.dof[j], sizeof(double) * dd * F->G);
            SET_VECTOR_ELT(pB, j, vb_real_vec((R_xlen_t)(pd * F->G), S.Bc + S.bo[j]));
            SET_VECTOR_ELT(pD, j, vb_real_vec((R_xlen_t)(dd * F->G), S.Dc + S.dof[j]));
        }
        memcpy(bcv, S.Sb, sizeof(double) * p * p);
        SET_VECTOR_ELT(pr, 0, vb_real_mat(p, p, S.Ac));
        SET_VECTOR_ELT(pr, 1, pB);
        SET_VECTOR_ELT(pr, 2, pD);
        SET_VECTOR_ELT(out, 17, pr);
    } else {
        for (int j = 0; j < G.J; j++)
            memset(REAL(VECTOR_ELT(rc, j)), 0, sizeof(double) * G.F[j].d * G.F[j].d * G.F[j].G);
        for (int c = 0; c < S.ncell; c++) {
            cell *C = S.cells + c;
            for (int r = 0; r < C->k; r++)
                for (int s = 0; s < C->k; s++) {
                    int p1 = C->a + r, p2 = C->a + s, j1, g1, k1, j2, g2, k2;
                    pos_where(&S, p1, &j1, &g1, &k1);
                    pos_where(&S, p2, &j2, &g2, &k2);
                    double cv = C->Sig[r + (size_t)s * C->k];
                    if (j1 == -1 && j2 == -1) bcv[p1 + (size_t)p2 * p] = cv;
                    if (j1 == -1 && j2 >= 0) {
                        int d = G.F[j2].d;
                        REAL(VECTOR_ELT(xc, j2))
                        [p1 + (size_t)k2 * p + (size_t)g2 * p * d] = cv;
                    }
                    if (j1 >= 0 && j1 == j2 && g1 == g2) {
                        int d = G.F[j1].d;
                        REAL(VECTOR_ELT(rc, j1))[k1 + (size_t)k2 * d + (size_t)g1 * d * d] = cv;
                    }
                }
        }
        if (G.approx == GLMM_FULLRANK) SET_VECTOR_ELT(out, 15, vb_real_mat(D, D, S.cells[0].Sig));
    }
    SET_VECTOR_ELT(out, 1, bc);
    SET_VECTOR_ELT(out, 2, rc);
    SEXP sq = PROTECT(Rf_allocVector(VECSXP, G.ncov)), aq = PROTECT(Rf_allocVector(VECSXP, G.ncov));
    nprot += 2;
    for (int c = 0; c < G.ncov; c++) {
        glmm_cov *C = G.C + c;
        SEXP e = PROTECT(Rf_allocVector(VECSXP, 2));
        SET_VECTOR_ELT(e, 0, Rf_ScalarReal(C->mq));
        SET_VECTOR_ELT(e, 1, vb_real_mat(C->d, C->d, C->Psiq));
        SET_VECTOR_ELT(sq, c, e);
        UNPROTECT(1);
        SEXP f = PROTECT(Rf_allocMatrix(REALSXP, C->d, 2));
        for (int k = 0; k < C->d; k++) {
            REAL(f)[k] = C->aA[k];
            REAL(f)[k + C->d] = C->aB[k];
        }
        SET_VECTOR_ELT(aq, c, f);
        UNPROTECT(1);
    }
    SET_VECTOR_ELT(out, 3, sq);
    SET_VECTOR_ELT(out, 4, aq);
    double tau[2] = {S.A, S.B};
    SET_VECTOR_ELT(out, 5, vb_real_vec(2, tau));
    SET_VECTOR_ELT(out, 6, vb_real_vec(n, S.m));
    SET_VECTOR_ELT(out, 7, vb_real_vec(n, S.v));
    SET_VECTOR_ELT(out, 8, Rf_ScalarReal(elbo));
    SET_VECTOR_ELT(out, 9, Rf_ScalarReal(ll));
    SET_VECTOR_ELT(out, 10, Rf_ScalarReal(kl));
    SET_VECTOR_ELT(out, 11, vb_real_vec(tr.n, tr.x));
    SET_VECTOR_ELT(out, 12, Rf_ScalarInteger(it));
    SET_VECTOR_ELT(out, 13, Rf_ScalarInteger(status));
    SET_VECTOR_ELT(out, 14, Rf_ScalarLogical(status == VB_OK));
    UNPROTECT(nprot);
    return out;
}
