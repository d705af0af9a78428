/*
 * amortized.c — amortized variational inference for latent-factor models of
 * trials (vb_amortized()).
 *
 * Model: z_i ~ N(0, I_d), i = 1..n trials; N units with decoder
 *   poisson:  y_ij ~ Poisson(exp(c_j'z_i + d_j + o_i)),  o_i = log exposure
 *   gaussian: y_ij ~ N(c_j'z_i + d_j, psi_j)   (psi shared: pPCA; else factor analysis)
 * Encoder: q(z_i | y_i) = N(m_i, Sigma_i), Sigma_i = diag(D_i) + V_i V_i' with
 * V_i d x r (r = 0: diagonal), (m_i, log D_i, V_i) = mlp(x_i), x_i the
 * transformed, standardised responses (mlp.c).  With mu_ij = c_j'm_i + d_j + o_i,
 * s_ij = c_j'Sigma_i c_j = sum_k C_jk^2 D_ik + |V_i'c_j|^2, the per-trial ELBO is
 * closed form:
 *   ELBO_i = sum_j f(y_ij; mu_ij, s_ij) + const_i - KL_i,
 *   KL_i = 1/2 (tr Sigma + m'm - d - log|Sigma|)   (log|Sigma| from a d x d Cholesky)
 *   poisson  f = y mu - exp(mu + s/2)                  (E e^eta exact)
 *   gaussian f = -1/2 log psi_j - ((y - mu)^2 + s) / (2 psi_j)
 * so its gradients are exact (no Monte Carlo): with F_mu = df/dmu, F_s = df/ds,
 * U = C V (N x r),
 *   dELBO/dm = C'F_mu - m,
 *   dELBO/dD = (C o C)'F_s - 1/2 + 1/2 diag(Sigma^-1),
 *   dELBO/dV = 2 C'(F_s o U) - V + Sigma^-1 V,
 *   dELBO/dC = F_mu m' + 2 C o (F_s D') + 2 (F_s o U) V',   dELBO/dd = F_mu,
 *   dELBO/dlog psi_j = -1/2 + ((y - mu)^2 + s) / (2 psi_j),
 * summed over trials; for a minibatch every product above is one dgemm over
 * the batch (the V_i side by side, d x rB), only the d x d factorisations of Sigma_i are
 * per trial (O(d^3)).  The encoder gradient back-propagates (dm, D dELBO/dD, dELBO/dV).
 * Parameters: one vector theta = (encoder, C (N x d), d (N), log psi (0, 1 or N)).
 *
 * Training (C_amortized_fit): Adam on minibatch means of ELBO_i over the
 * training trials, reshuffled with R's RNG whenever a pass is used up; every
 * `check` minibatches (at most one pass) the mean ELBO of the validation
 * trials (or, without any, the mean over those minibatches) is the stopping
 * criterion: after `patience` checks without a relative improvement of more
 * than tol the step size halves and training restarts from the best
 * parameters, and after `decays` such halvings it stops (VB_OK).  The best
 * parameters are returned.  Cost per pass O(n (encoder flops + 6 N d (1 + r))),
 * level-3 BLAS; memory O(batch x widths) beyond the data.
 *
 * Prediction (C_amortized_encode): the encoder alone, for all trials of a
 * trials x units matrix, blocks of trials through one dgemm per layer,
 * transform and standardisation folded into the copy of each block; no
 * likelihood, no lgamma.  O(n encoder flops).
 *
 * Refinement (C_amortized_refine): per trial, steps on ELBO_i from the
 * encoder output towards the per-trial optimum q*_i of the family.
 * Diagonal: a fixed-point update of v, v_k = 1 / (1 + sum_j C_jk^2 w_j), then
 * a joint Newton step in (m, v), both with step halving (so the ELBO never
 * decreases; ELBO_i is jointly concave in (m, v)):
 *   -H = A'diag(w)A + diag(1_d, 1/(2 v^2)),  A = [C, C o C / 2], w_j = e^(mu_j + s_j/2)
 * (gaussian: A = [C, 0], w = 1/psi), a 2d x 2d Cholesky solve per step,
 * O(N d^2 + d^3).  Low rank: a Newton step in m (-H = I + C'diag(w)C) with
 * step halving, then BFGS (R's vmmin) in (log D, V) with m fixed.
 *
 * C_amortized_eval: (m, v, ELBO_i) for every trial, and optionally the
 * gradient of sum_i ELBO_i in theta (for finite-difference tests); with
 * opts$draws = S > 0 the reparameterised S-draw Monte Carlo estimates of both
 * instead (the single-sample estimator of Kingma & Welling, to check the closed
 * forms; also available for training, control$draws; diagonal family only).
 */
#include "mlp.h"
#include "vbayes.h"
#include <R_ext/Applic.h>

typedef struct {
    int n, N, d, r, nout, family, npsi, learn_dec;
    int draws; /* 0: closed-form expectations; S > 0: reparameterised S-draw estimates */
    const double *y, *x, *off; /* N x n, N x n, n */
    double *cst;               /* per-trial constant of the log-likelihood */
    vb_mlp net;
    int L, *size;
    size_t nenc, P;
} amz_model;

/* Unpack and check the model list built by R's amz_model(). */
static void amz_unpack(SEXP model, amz_model *M) {
    const char *w = "model";
    SEXP y = vb_elt_req(model, "y", w), x = vb_elt_req(model, "x", w);
    if (TYPEOF(y) != REALSXP || !Rf_isMatrix(y) || TYPEOF(x) != REALSXP || !Rf_isMatrix(x))
        Rf_error("'model$y' and 'model$x' must be double matrices (units x trials)");
    M->N = Rf_nrows(y);
    M->n = Rf_ncols(y);
    if (M->N < 1 || M->n < 1) Rf_error("'model$y' needs at least one unit and one trial");
    if (Rf_nrows(x) != M->N || Rf_ncols(x) != M->n)
        Rf_error("'model$x' must have the dimensions of 'model$y'");
    M->y = REAL(y);
    M->x = REAL(x);
    M->family = vb_int_elt(model, "family", VB_GAUSSIAN, VB_POISSON, w);
    M->d = vb_int_elt(model, "latent_dim", 1, 10000, w);
    M->r = vb_int_elt(model, "rank", 0, M->d, w);
    M->nout = 2 * M->d + M->d * M->r;
    M->off = vb_real_elt(model, "offset", M->n, w);
    M->npsi = vb_int_elt(model, "npsi", 0, M->N, w);
    if (M->family == VB_POISSON ? M->npsi != 0 : (M->npsi != 1 && M->npsi != M->N))
        Rf_error("'model$npsi' must be 0 (poisson), 1 or N (gaussian)");
    M->learn_dec = vb_flag_elt(model, "learn_decoder", w);
    M->draws = 0;
    M->net.act = vb_int_elt(model, "activation", VB_ACT_TANH, VB_ACT_SOFTPLUS, w);
    SEXP sz = vb_elt_req(model, "sizes", w);
    if (TYPEOF(sz) != INTSXP || Rf_length(sz) < 2 || Rf_length(sz) > VB_MLP_MAXL + 1)
        Rf_error("'model$sizes' must be an integer vector of 2 to %d layer widths",
                 VB_MLP_MAXL + 1);
    M->L = Rf_length(sz) - 1;
    M->size = INTEGER(sz);
    for (int l = 0; l <= M->L; l++)
        if (M->size[l] == NA_INTEGER || M->size[l] < 1 || M->size[l] > 100000)
            Rf_error("'model$sizes' must be widths between 1 and 100000");
    if (M->size[0] != M->N || M->size[M->L] != M->nout)
        Rf_error("'model$sizes' must start with the number of units and end with "
                 "latent_dim * (2 + rank)");
    M->net.L = M->L;
    M->net.size = M->size;
    M->nenc = vb_mlp_nparam(M->L, M->size);
    M->P = M->nenc + (size_t)M->N * M->d + M->N + M->npsi;
    size_t Nn = (size_t)M->N * M->n;
    for (size_t k = 0; k < Nn; k++)
        if (!R_FINITE(M->y[k]) || !R_FINITE(M->x[k]) || (M->family == VB_POISSON && M->y[k] < 0))
            Rf_error("'model$y' and 'model$x' must be finite (poisson counts non-negative)");
    for (int i = 0; i < M->n; i++)
        if (!R_FINITE(M->off[i])) Rf_error("'model$offset' must be finite");
    M->cst = (double *)R_alloc(M->n, sizeof(double));
    for (int i = 0; i < M->n; i++) {
        double c = 0;
        const double *yi = M->y + (size_t)i * M->N;
        if (M->family == VB_POISSON)
            for (int j = 0; j < M->N; j++)
                c -= lgammafn(yi[j] + 1.0);
        else
            c = -0.5 * M->N * VB_LOG2PI;
        M->cst[i] = c;
    }
}

static const double *theta_elt(SEXP theta, const amz_model *M, const char *what) {
    if (TYPEOF(theta) != REALSXP || (size_t)Rf_xlength(theta) != M->P)
        Rf_error("'%s' must be a double vector of length %.0f (encoder and decoder parameters)",
                 what, (double)M->P);
    for (size_t k = 0; k < M->P; k++)
        if (!R_FINITE(REAL(theta)[k])) Rf_error("'%s' must be finite", what);
    return REAL(theta);
}

/* ------------------------------------------- the low-rank Gaussian -- */

/*
 * KL(N(m, D + V V') || N(0, I)) without m'm (the caller adds it), and, when
 * gD != NULL, its negative gradient in D and V:
 *   gD = -1/2 + 1/2 diag(Sigma^-1),  gV = -V + Sigma^-1 V.
 * Through the Cholesky factor of Sigma itself (d x d) rather than the
 * Woodbury form: the optimum of a low-rank family often sends some D_k
 * towards 0 (V carries that variance), where D^-1 V overflows but Sigma
 * stays well conditioned.  work: d^2 doubles.  O(d^3 + d^2 r).  Returns VB_OK
 * or VB_NOT_PD.
 */
static int lr_kl(int d, int r, const double *D, const double *V, double *kl, double *gD, double *gV,
                 double *work) {
    double *S = work, tr = 0;
    for (int a = 0; a < d; a++)
        for (int b = 0; b <= a; b++) {
            double s = a == b ? D[a] : 0;
            for (int l = 0; l < r; l++)
                s += V[a + (size_t)l * d] * V[b + (size_t)l * d];
            S[a + (size_t)b * d] = S[b + (size_t)a * d] = s;
        }
    for (int k = 0; k < d; k++)
        tr += S[k + (size_t)k * d];
    if (vb_chol(d, S, d) != 0) return VB_NOT_PD;
    *kl = 0.5 * (tr - d - vb_chol_logdet(d, S, d));
    if (!gD) return VB_OK;
    if (vb_chol_inv(d, S, d) != 0) return VB_NOT_PD;
    for (int k = 0; k < d; k++) {
        gD[k] = -0.5 + 0.5 * S[k + (size_t)k * d];
        for (int l = 0; l < r; l++) {
            double siv = 0;
            for (int b = 0; b < d; b++)
                siv += S[k + (size_t)b * d] * V[b + (size_t)l * d];
            gV[k + (size_t)l * d] = siv - V[k + (size_t)l * d];
        }
    }
    return VB_OK;
}

/* ------------------------------------------------ minibatch ELBO -- */

typedef struct {
    int B; /* capacity */
    double *X, *acts, *out, *V, *Mu, *S, *Fm, *Fs, *dout, *scr, *C2, *tmp;
    double *Vall, *U, *Wt, *G, *gKD, *gKV, *kw; /* low rank: d x rB, N x rB (2), d x rB, ... */
} amz_work;

static void work_alloc(const amz_model *M, int B, amz_work *W) {
    int N = M->N, d = M->d, r = M->r;
    size_t NB = (size_t)N * B, rB = (size_t)r * B;
    W->B = B;
    W->X = (double *)R_alloc(NB, sizeof(double));
    W->acts = (double *)R_alloc(vb_mlp_nacts(M->L, M->size, B) + 1, sizeof(double));
    W->out = (double *)R_alloc((size_t)M->nout * B, sizeof(double));
    W->dout = (double *)R_alloc((size_t)M->nout * B, sizeof(double));
    W->V = (double *)R_alloc((size_t)d * B, sizeof(double));
    W->Mu = (double *)R_alloc(NB, sizeof(double));
    W->S = (double *)R_alloc(NB, sizeof(double));
    W->Fm = (double *)R_alloc(NB, sizeof(double));
    W->Fs = (double *)R_alloc(NB, sizeof(double));
    W->scr = (double *)R_alloc((size_t)2 * vb_mlp_maxwidth(M->L, M->size) * B, sizeof(double));
    W->C2 = (double *)R_alloc((size_t)N * d, sizeof(double));
    W->tmp = (double *)R_alloc((size_t)N * d > (size_t)3 * d ? (size_t)N * d : (size_t)3 * d,
                               sizeof(double));
    W->gKD = (double *)R_alloc((size_t)d * B, sizeof(double));
    if (r > 0) {
        W->Vall = (double *)R_alloc((size_t)d * rB, sizeof(double));
        W->G = (double *)R_alloc((size_t)d * rB, sizeof(double));
        W->gKV = (double *)R_alloc((size_t)d * rB, sizeof(double));
        W->U = (double *)R_alloc((size_t)N * rB, sizeof(double));
        W->Wt = (double *)R_alloc((size_t)N * rB, sizeof(double));
        W->kw = (double *)R_alloc((size_t)d * d, sizeof(double));
    } else
        W->Vall = W->G = W->gKV = W->U = W->Wt = W->kw = NULL;
}

/*
 * The reparameterised Monte Carlo estimator (for checking the closed forms):
 * z = m + sqrt(v) e, e ~ N(0, I), S draws per trial; log p(y | z) is averaged
 * and its gradient taken along the path (d/dm = C'F, d/dlog v = C'F e sqrt(v)/2,
 * F = d log p / d eta), the KL term stays closed form.  Uses the encoder output
 * in W->out / W->V from batch_elbo and R's generator (callers hold GetRNGstate).
 */
static int mc_elbo(const amz_model *M, const double *theta, const int *idx, int B, amz_work *W,
                   double *elbo, double *grad, int all_grad) {
    int N = M->N, d = M->d, d2 = 2 * d, S = M->draws;
    const double *C = theta + M->nenc, *dv = C + (size_t)N * d, *lpsi = dv + N;
    double *gC = grad ? grad + M->nenc : NULL, *gd = gC ? gC + (size_t)N * d : NULL,
           *gp = gd ? gd + N : NULL;
    int dec = grad && (M->learn_dec || all_grad), bad = 0;
    double *z = W->tmp, *e = W->tmp + d, *gz = W->tmp + 2 * d; /* tmp holds N d >= 3 d doubles */
    double *F = W->Fm;
    for (int b = 0; b < B; b++) {
        int i = idx[b];
        const double *yi = M->y + (size_t)i * N;
        const double *mb = W->out + (size_t)b * d2, *vb = W->V + (size_t)b * d;
        double *g = W->dout + (size_t)b * d2, ll = 0, kl = 0;
        if (grad)
            for (int k = 0; k < d2; k++)
                g[k] = 0;
        for (int s = 0; s < S; s++) {
            for (int k = 0; k < d; k++) {
                e[k] = norm_rand();
                z[k] = mb[k] + sqrt(vb[k]) * e[k];
                gz[k] = 0;
            }
            double l = M->cst[i];
            for (int j = 0; j < N; j++) {
                double eta = dv[j] + M->off[i];
                for (int k = 0; k < d; k++)
                    eta += C[j + (size_t)k * N] * z[k];
                if (M->family == VB_POISSON) {
                    double w = exp(eta);
                    l += yi[j] * eta - w;
                    F[j] = yi[j] - w;
                } else {
                    double lp = lpsi[M->npsi == 1 ? 0 : j], ip = exp(-lp), r = yi[j] - eta;
                    l += -0.5 * lp - 0.5 * ip * r * r;
                    F[j] = ip * r;
                    if (dec) gp[M->npsi == 1 ? 0 : j] += (-0.5 + 0.5 * ip * r * r) / S;
                }
                for (int k = 0; k < d; k++)
                    gz[k] += C[j + (size_t)k * N] * F[j];
                if (dec) {
                    gd[j] += F[j] / S;
                    for (int k = 0; k < d; k++)
                        gC[j + (size_t)k * N] += F[j] * z[k] / S;
                }
            }
            ll += l / S;
            if (grad)
                for (int k = 0; k < d; k++) {
                    g[k] += gz[k] / S;
                    g[d + k] += 0.5 * gz[k] * e[k] * sqrt(vb[k]) / S;
                }
        }
        for (int k = 0; k < d; k++) {
            double mk = mb[k], vk = vb[k], lv = mb[d + k];
            kl += 0.5 * (mk * mk + vk - lv - 1);
            if (grad) {
                g[k] -= mk;
                g[d + k] += 0.5 - 0.5 * vk;
            }
        }
        elbo[b] = ll - kl;
        if (!R_FINITE(elbo[b])) bad = 1;
    }
    if (bad) return VB_NONFINITE;
    if (grad) vb_mlp_backward(&M->net, theta, B, W->X, W->acts, W->dout, d2, grad, W->scr);
    return VB_OK;
}

/*
 * ELBO_i for the B trials idx[0..B-1] at theta: writes elbo[b] and, when m/v
 * are not NULL, the encoder's mean and marginal variances diag(Sigma) (d x B
 * each).  With grad != NULL adds the gradient of sum_b ELBO_b to grad (length
 * P; the decoder part only when learn_dec or all_grad).  Returns VB_OK,
 * VB_NONFINITE or VB_NOT_PD.
 */
static int batch_elbo(const amz_model *M, const double *theta, const int *idx, int B, amz_work *W,
                      double *elbo, double *m, double *v, double *grad, int all_grad) {
    int N = M->N, d = M->d, r = M->r, ld = M->nout, rB = r * B;
    double one = 1.0, zero = 0.0, two = 2.0;
    const double *C = theta + M->nenc, *dv = C + (size_t)N * d, *lpsi = dv + N;
    for (size_t k = 0; k < (size_t)N * d; k++)
        W->C2[k] = C[k] * C[k];
    for (int b = 0; b < B; b++)
        memcpy(W->X + (size_t)b * N, M->x + (size_t)idx[b] * N, sizeof(double) * N);
    vb_mlp_forward(&M->net, theta, B, W->X, N, 0, W->acts, W->out, ld);
    for (int b = 0; b < B; b++)
        for (int k = 0; k < d; k++)
            W->V[k + (size_t)b * d] = exp(W->out[d + k + (size_t)b * ld]);
    /* Mu = C m + d + o, S = (C o C) D + rowsums over r of (C V_b)^2 */
    F77_CALL(dgemm)("N", "N", &N, &B, &d, &one, C, &N, W->out, &ld, &zero, W->Mu, &N FCONE FCONE);
    F77_CALL(dgemm)("N", "N", &N, &B, &d, &one, W->C2, &N, W->V, &d, &zero, W->S, &N FCONE FCONE);
    if (r > 0) {
        for (int b = 0; b < B; b++)
            memcpy(W->Vall + (size_t)b * d * r, W->out + (size_t)b * ld + 2 * d,
                   sizeof(double) * d * r);
        F77_CALL(dgemm)
        ("N", "N", &N, &rB, &d, &one, C, &N, W->Vall, &d, &zero, W->U, &N FCONE FCONE);
        for (int b = 0; b < B; b++) {
            double *s = W->S + (size_t)b * N;
            for (int l = 0; l < r; l++) {
                const double *u = W->U + (size_t)(b * r + l) * N;
                for (int j = 0; j < N; j++)
                    s[j] += u[j] * u[j];
            }
        }
    }
    int bad = 0;
    for (int b = 0; b < B; b++) {
        int i = idx[b];
        const double *yi = M->y + (size_t)i * N;
        double *mu = W->Mu + (size_t)b * N, *s = W->S + (size_t)b * N;
        double *fm = W->Fm + (size_t)b * N, *fs = W->Fs + (size_t)b * N;
        double ll = M->cst[i], kl = 0;
        for (int j = 0; j < N; j++) {
            mu[j] += dv[j] + M->off[i];
            if (M->family == VB_POISSON) {
                double w = exp(mu[j] + 0.5 * s[j]);
                ll += yi[j] * mu[j] - w;
                fm[j] = yi[j] - w;
                fs[j] = -0.5 * w;
            } else {
                double lp = lpsi[M->npsi == 1 ? 0 : j], ip = exp(-lp), r_ = yi[j] - mu[j];
                ll += -0.5 * lp - 0.5 * ip * (r_ * r_ + s[j]);
                fm[j] = ip * r_;
                fs[j] = -0.5 * ip;
            }
        }
        const double *ob = W->out + (size_t)b * ld, *Db = W->V + (size_t)b * d;
        double *gKD = W->gKD + (size_t)b * d;
        for (int k = 0; k < d; k++)
            kl += 0.5 * ob[k] * ob[k];
        if (r == 0) {
            for (int k = 0; k < d; k++) {
                kl += 0.5 * (Db[k] - ob[d + k] - 1);
                gKD[k] = -0.5 + 0.5 / Db[k];
            }
        } else {
            double klc;
            int st = lr_kl(d, r, Db, ob + 2 * d, &klc, grad ? gKD : NULL,
                           grad ? W->gKV + (size_t)b * d * r : NULL, W->kw);
            if (st != VB_OK) return st;
            kl += klc;
        }
        for (int k = 0; k < d; k++) {
            if (m) m[k + (size_t)b * d] = ob[k];
            if (v) {
                double vk = Db[k];
                for (int l = 0; l < r; l++)
                    vk += ob[2 * d + k + l * d] * ob[2 * d + k + l * d];
                v[k + (size_t)b * d] = vk;
            }
        }
        elbo[b] = ll - kl;
        if (!R_FINITE(elbo[b])) bad = 1;
    }
    if (bad) return VB_NONFINITE;
    if (M->draws > 0) return mc_elbo(M, theta, idx, B, W, elbo, grad, all_grad);
    if (!grad) return VB_OK;
    /* encoder outputs: dm = C'F_mu - m, dlogD = D ((C o C)'F_s + gKD),
       dV = 2 C'(F_s o U) + gKV */
    F77_CALL(dgemm)("T", "N", &d, &B, &N, &one, C, &N, W->Fm, &N, &zero, W->dout, &ld FCONE FCONE);
    F77_CALL(dgemm)
    ("T", "N", &d, &B, &N, &one, W->C2, &N, W->Fs, &N, &zero, W->dout + d, &ld FCONE FCONE);
    for (int b = 0; b < B; b++) {
        double *g = W->dout + (size_t)b * ld;
        const double *ob = W->out + (size_t)b * ld, *Db = W->V + (size_t)b * d;
        const double *gKD = W->gKD + (size_t)b * d;
        for (int k = 0; k < d; k++) {
            g[k] -= ob[k];
            g[d + k] = Db[k] * (g[d + k] + gKD[k]);
        }
    }
    if (r > 0) {
        for (int b = 0; b < B; b++) {
            const double *fs = W->Fs + (size_t)b * N;
            for (int l = 0; l < r; l++) {
                const double *u = W->U + (size_t)(b * r + l) * N;
                double *wt = W->Wt + (size_t)(b * r + l) * N;
                for (int j = 0; j < N; j++)
                    wt[j] = fs[j] * u[j];
            }
        }
        F77_CALL(dgemm)
        ("T", "N", &d, &rB, &N, &two, C, &N, W->Wt, &N, &zero, W->G, &d FCONE FCONE);
        for (int b = 0; b < B; b++) {
            double *g = W->dout + (size_t)b * ld + 2 * d;
            const double *gg = W->G + (size_t)b * d * r, *gk = W->gKV + (size_t)b * d * r;
            for (int k = 0; k < d * r; k++)
                g[k] = gg[k] + gk[k];
        }
    }
    vb_mlp_backward(&M->net, theta, B, W->X, W->acts, W->dout, ld, grad, W->scr);
    if (!M->learn_dec && !all_grad) return VB_OK;
    /* decoder: dC = F_mu m' + 2 C o (F_s D') + 2 (F_s o U) V', dd = rowsums F_mu */
    double *gC = grad + M->nenc, *gd = gC + (size_t)N * d, *gp = gd + N;
    F77_CALL(dgemm)("N", "T", &N, &d, &B, &one, W->Fm, &N, W->out, &ld, &one, gC, &N FCONE FCONE);
    F77_CALL(dgemm)("N", "T", &N, &d, &B, &one, W->Fs, &N, W->V, &d, &zero, W->tmp, &N FCONE FCONE);
    for (size_t k = 0; k < (size_t)N * d; k++)
        gC[k] += 2 * C[k] * W->tmp[k];
    if (r > 0) F77_CALL(dgemm)
    ("N", "T", &N, &d, &rB, &two, W->Wt, &N, W->Vall, &d, &one, gC, &N FCONE FCONE);
    for (int b = 0; b < B; b++) {
        int i = idx[b];
        const double *yi = M->y + (size_t)i * N, *fm = W->Fm + (size_t)b * N;
        const double *mu = W->Mu + (size_t)b * N, *s = W->S + (size_t)b * N;
        for (int j = 0; j < N; j++) {
            gd[j] += fm[j];
            if (M->npsi > 0) {
                double ip = exp(-lpsi[M->npsi == 1 ? 0 : j]), r_ = yi[j] - mu[j];
                gp[M->npsi == 1 ? 0 : j] += -0.5 + 0.5 * ip * (r_ * r_ + s[j]);
            }
        }
    }
    return VB_OK;
}

/* Mean ELBO_i over the trials idx[0..n-1], in batches of W->B (no gradient). */
static int mean_elbo(const amz_model *M, const double *theta, const int *idx, int n, amz_work *W,
                     double *ebuf, double *val) {
    double s = 0;
    for (int i0 = 0; i0 < n; i0 += W->B) {
        int B = n - i0 < W->B ? n - i0 : W->B;
        int st = batch_elbo(M, theta, idx + i0, B, W, ebuf, NULL, NULL, NULL, 0);
        if (st != VB_OK) return st;
        for (int b = 0; b < B; b++)
            s += ebuf[b];
        if (vb_interrupted()) return VB_INTERRUPTED;
    }
    *val = s / n;
    return VB_OK;
}

/* ------------------------------------------------------ training -- */

typedef struct {
    int epochs, batch, check, patience, decays, quiet;
    double lr, tol;
} amz_settings;

typedef struct {
    double *theta;        /* in: start, out: best */
    double *tr, *va, *ep; /* per check: mean training / validation ELBO, passes so far */
    int checks, decays_used;
    double epochs, best;
} amz_result;

/* Fisher-Yates with R's generator */
static void shuffle(int *perm, int n) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)floor(unif_rand() * (i + 1));
        if (j > i) j = i;
        int tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
}

static int train(const amz_model *M, const amz_settings *S, const int *tidx, int ntr,
                 const int *vidx, int nva, amz_result *R) {
    size_t P = M->P;
    int B = S->batch < ntr ? S->batch : ntr;
    int spe = ntr / B; /* minibatches per pass; a pass's remainder waits for the next */
    int period = S->check < spe ? S->check : spe;
    double maxsteps = (double)S->epochs * spe;
    amz_work W;
    work_alloc(M, B, &W);
    double *th = R->theta, *best = (double *)R_alloc(P, sizeof(double));
    double *g = (double *)R_alloc(P, sizeof(double)), *m1 = (double *)R_alloc(P, sizeof(double));
    double *m2 = (double *)R_alloc(P, sizeof(double)), *eb = (double *)R_alloc(B, sizeof(double));
    int *perm = (int *)R_alloc(ntr, sizeof(int));
    memcpy(perm, tidx, sizeof(int) * ntr);
    memcpy(best, th, sizeof(double) * P);
    memset(m1, 0, sizeof(double) * P);
    memset(m2, 0, sizeof(double) * P);
    size_t Pupd = M->learn_dec ? P : M->nenc;
    double lr = S->lr, b1 = 0.9, b2 = 0.999, t = 0, bestv = R_NegInf, steps = 0;
    int stall = 0, status = VB_MAXIT, pos = ntr;
    vb_progress pr;
    vb_progress_init(&pr, S->quiet);
    R->checks = 0;
    R->epochs = 0;
    R->decays_used = 0;
    while (steps < maxsteps) {
        double sum = 0;
        int st = VB_OK, done = 0;
        for (; done < period && steps < maxsteps; done++, steps++) {
            if (pos + B > ntr) {
                shuffle(perm, ntr);
                pos = 0;
            }
            memset(g, 0, sizeof(double) * P);
            st = batch_elbo(M, th, perm + pos, B, &W, eb, NULL, NULL, g, 0);
            pos += B;
            if (st != VB_OK) break;
            for (int b = 0; b < B; b++)
                sum += eb[b];
            t += 1;
            double c1 = 1 - pow(b1, t), c2 = 1 - pow(b2, t);
            for (size_t k = 0; k < Pupd; k++) {
                double gk = g[k] / B;
                m1[k] = b1 * m1[k] + (1 - b1) * gk;
                m2[k] = b2 * m2[k] + (1 - b2) * gk * gk;
                th[k] += lr * (m1[k] / c1) / (sqrt(m2[k] / c2) + 1e-8);
            }
            if (vb_interrupted()) {
                st = VB_INTERRUPTED;
                break;
            }
        }
        double trm = done > 0 ? sum / ((double)done * B) : R_NegInf, val = trm;
        if (st == VB_OK && nva > 0) st = mean_elbo(M, th, vidx, nva, &W, eb, &val);
        if (st != VB_OK) {
            status = st;
            break;
        }
        R->tr[R->checks] = trm;
        R->va[R->checks] = val;
        R->ep[R->checks] = steps / spe;
        R->checks++;
        R->epochs = steps / spe;
        vb_progress_tick(&pr, "vb_amortized()", R->checks, val);
        if (!R_FINITE(val)) {
            status = VB_NONFINITE;
            break;
        }
        if (val > bestv) {
            stall = vb_tol_met(bestv, val, S->tol) ? stall + 1 : 0;
            bestv = val;
            memcpy(best, th, sizeof(double) * P);
        } else
            stall++;
        if (stall >= S->patience) {
            if (R->decays_used >= S->decays) {
                status = VB_OK;
                break;
            }
            R->decays_used++;
            lr *= 0.5;
            stall = 0;
            memcpy(th, best, sizeof(double) * P);
            memset(m1, 0, sizeof(double) * P);
            memset(m2, 0, sizeof(double) * P);
            t = 0;
        }
    }
    memcpy(th, best, sizeof(double) * P);
    R->best = bestv;
    return status;
}

static int read_index(SEXP v, int n, const char *what, int **out) {
    if (TYPEOF(v) != INTSXP) Rf_error("'%s' must be an integer vector of trial numbers", what);
    int k = Rf_length(v);
    *out = (int *)R_alloc(k > 0 ? k : 1, sizeof(int));
    for (int i = 0; i < k; i++) {
        int j = INTEGER(v)[i];
        if (j == NA_INTEGER || j < 1 || j > n)
            Rf_error("'%s' must hold trial numbers in 1..%d", what, n);
        (*out)[i] = j - 1;
    }
    return k;
}

SEXP C_amortized_fit(SEXP model, SEXP theta, SEXP control) {
    amz_model M;
    amz_unpack(model, &M);
    const double *th0 = theta_elt(theta, &M, "theta");
    const char *w = "control";
    amz_settings S;
    S.epochs = vb_int_elt(control, "epochs", 1, 10000000, w);
    S.batch = vb_int_elt(control, "batch_size", 1, 1000000, w);
    S.check = vb_int_elt(control, "check_every", 1, 10000000, w);
    S.patience = vb_int_elt(control, "patience", 1, 1000000, w);
    S.decays = vb_int_elt(control, "decays", 0, 1000, w);
    S.lr = vb_num_elt(control, "step_size", 0, 1e6, w);
    S.tol = vb_num_elt(control, "tol", 0, 1, w);
    S.quiet = vb_flag_elt(control, "quiet", w);
    M.draws = vb_int_elt(control, "draws", 0, 100000, w);
    if (!(S.lr > 0) || !(S.tol > 0))
        Rf_error("'control$step_size' and 'control$tol' must be positive");
    if (M.draws > 0 && M.r > 0)
        Rf_error("the reparameterised estimator ('control$draws' > 0) needs rank 0 (diagonal)");
    int *tidx, *vidx;
    int ntr = read_index(vb_elt_req(control, "train", w), M.n, "control$train", &tidx);
    int nva = read_index(vb_elt_req(control, "validation", w), M.n, "control$validation", &vidx);
    if (ntr < 1) Rf_error("'control$train' must name at least one trial");
    int B = S.batch < ntr ? S.batch : ntr, spe = ntr / B, period = S.check < spe ? S.check : spe;
    double maxchecks = ceil((double)S.epochs * spe / period) + 1;
    if (maxchecks > 1e8)
        Rf_error("'control$epochs' and 'control$check_every' give too many checks");
    amz_result R;
    R.theta = (double *)R_alloc(M.P, sizeof(double));
    memcpy(R.theta, th0, sizeof(double) * M.P);
    R.tr = (double *)R_alloc((size_t)maxchecks, sizeof(double));
    R.va = (double *)R_alloc((size_t)maxchecks, sizeof(double));
    R.ep = (double *)R_alloc((size_t)maxchecks, sizeof(double));
    GetRNGstate();
    int status = train(&M, &S, tidx, ntr, vidx, nva, &R);
    PutRNGstate();
    int np = 0;
    const char *nm[] = {
        "theta",  "train_trace", "validation_trace", "epoch_trace", "checks", "epochs",
        "decays", "best",        "status",           "converged",   ""};
    SEXP out = vb_named_list(nm, &np);
    SET_VECTOR_ELT(out, 0, vb_real_vec(M.P, R.theta));
    SET_VECTOR_ELT(out, 1, vb_real_vec(R.checks, R.tr));
    SET_VECTOR_ELT(out, 2, vb_real_vec(R.checks, R.va));
    SET_VECTOR_ELT(out, 3, vb_real_vec(R.checks, R.ep));
    SET_VECTOR_ELT(out, 4, Rf_ScalarInteger(R.checks));
    SET_VECTOR_ELT(out, 5, Rf_ScalarReal(R.epochs));
    SET_VECTOR_ELT(out, 6, Rf_ScalarInteger(R.decays_used));
    SET_VECTOR_ELT(out, 7, Rf_ScalarReal(R.best));
    SET_VECTOR_ELT(out, 8, Rf_ScalarInteger(status));
    SET_VECTOR_ELT(out, 9, Rf_ScalarLogical(status == VB_OK));
    UNPROTECT(np);
    return out;
}

/* ------------------------------------------------ evaluation, gradient -- */

SEXP C_amortized_eval(SEXP model, SEXP theta, SEXP opts) {
    amz_model M;
    amz_unpack(model, &M);
    const double *th = theta_elt(theta, &M, "theta");
    int wg = vb_flag_elt(opts, "grad", "opts"), n = M.n, d = M.d;
    M.draws = vb_int_elt(opts, "draws", 0, 100000, "opts");
    if (M.draws > 0 && M.r > 0)
        Rf_error("the reparameterised estimator ('opts$draws' > 0) needs rank 0 (diagonal)");
    int B = n < 512 ? n : 512;
    amz_work W;
    work_alloc(&M, B, &W);
    int *idx = (int *)R_alloc(B, sizeof(int));
    int np = 0;
    const char *nm[] = {"m", "v", "elbo", "grad", "status", "D", "V", ""};
    SEXP out = vb_named_list(nm, &np);
    SEXP m = Rf_allocMatrix(REALSXP, d, n);
    SET_VECTOR_ELT(out, 0, m);
    SEXP v = Rf_allocMatrix(REALSXP, d, n);
    SET_VECTOR_ELT(out, 1, v);
    SEXP e = Rf_allocVector(REALSXP, n);
    SET_VECTOR_ELT(out, 2, e);
    SEXP g = Rf_allocVector(REALSXP, wg ? (R_xlen_t)M.P : 0);
    SET_VECTOR_ELT(out, 3, g);
    SEXP Do = Rf_allocMatrix(REALSXP, d, n);
    SET_VECTOR_ELT(out, 5, Do);
    SEXP Vo = Rf_allocMatrix(REALSXP, d * M.r, n);
    SET_VECTOR_ELT(out, 6, Vo);
    if (wg) memset(REAL(g), 0, sizeof(double) * M.P);
    int status = VB_OK;
    if (M.draws > 0) GetRNGstate();
    for (int i0 = 0; i0 < n && status == VB_OK; i0 += B) {
        int b = n - i0 < B ? n - i0 : B;
        for (int k = 0; k < b; k++)
            idx[k] = i0 + k;
        int st = batch_elbo(&M, th, idx, b, &W, REAL(e) + i0, REAL(m) + (size_t)i0 * d,
                            REAL(v) + (size_t)i0 * d, wg ? REAL(g) : NULL, 1);
        for (int k = 0; st == VB_OK && k < b; k++) {
            memcpy(REAL(Do) + (size_t)(i0 + k) * d, W.V + (size_t)k * d, sizeof(double) * d);
            if (M.r > 0)
                memcpy(REAL(Vo) + (size_t)(i0 + k) * d * M.r, W.out + (size_t)k * M.nout + 2 * d,
                       sizeof(double) * d * M.r);
        }
        if (st != VB_OK)
            status = st;
        else if (vb_interrupted())
            status = VB_INTERRUPTED;
    }
    if (M.draws > 0) PutRNGstate();
    SET_VECTOR_ELT(out, 4, Rf_ScalarInteger(status));
    UNPROTECT(np);
    return out;
}

/* ------------------------------------------------ prediction (encoder only) -- */

enum { AMZ_IDENTITY = 0, AMZ_LOG1P = 1, AMZ_SQRT = 2 };
#define AMZ_TAB 1024 /* counts below this take the transform from a table */

typedef struct {
    int transform, counts;
    const double *center, *scale;
    double tab[AMZ_TAB];
} amz_input;

/*
 * Block of B trials (rows i0.. of the n x N matrix y, double, or integer
 * yint when y is NULL) into X (B x N,
 * transformed and standardised).  Returns 0, or 1 (not finite) / 2 (not a
 * count) with *bad the trial (0-based).
 */
static int input_block(const double *y, const int *yint, int n, int N, int i0, int B,
                       const amz_input *in, double *X, int *bad) {
    for (int j = 0; j < N; j++) {
        size_t o = (size_t)j * n + i0;
        double *xj = X + (size_t)j * B, c = in->center[j], is = 1 / in->scale[j];
        for (int b = 0; b < B; b++) {
            double a, t;
            if (yint)
                a = yint[o + b] == NA_INTEGER ? NA_REAL : (double)yint[o + b];
            else
                a = y[o + b];
            if (!R_FINITE(a) || (in->counts && (a < 0 || a != floor(a)))) {
                *bad = i0 + b;
                return R_FINITE(a) ? 2 : 1;
            }
            if (in->transform == AMZ_IDENTITY)
                t = a;
            else if (a >= 0 && a < AMZ_TAB && a == (int)a)
                t = in->tab[(int)a];
            else
                t = in->transform == AMZ_LOG1P ? log1p(a > 0 ? a : 0) : sqrt(a > 0 ? a : 0);
            xj[b] = (t - c) * is;
        }
    }
    return 0;
}

/*
 * q(z | y_i) for all n trials: mean and marginal variances (n x d), and for
 * rank r > 0 the diagonal D (n x d) and factor V (n x d x r).  X: Bmax x N,
 * acts, out: the network's work for Bmax trials.  Returns VB_OK,
 * VB_BAD_INPUT (*kind, *bad set), VB_NONFINITE or VB_INTERRUPTED.
 */
static int encode(const vb_mlp *net, const double *theta, int d, int r, const double *y,
                  const int *yint, int n, int N, const amz_input *in, int Bmax, double *X,
                  double *acts, double *out, double *mean, double *var, double *Do, double *Vo,
                  int *kind, int *bad) {
    int nout = net->size[net->L];
    for (int i0 = 0; i0 < n; i0 += Bmax) {
        int B = n - i0 < Bmax ? n - i0 : Bmax;
        *kind = input_block(y, yint, n, N, i0, B, in, X, bad);
        if (*kind) return VB_BAD_INPUT;
        vb_mlp_forward(net, theta, B, X, B, 1, acts, out, nout);
        for (int b = 0; b < B; b++) {
            const double *o = out + (size_t)b * nout;
            size_t i = (size_t)i0 + b;
            for (int k = 0; k < d; k++) {
                double Dk = exp(o[d + k]), vk = Dk;
                mean[i + (size_t)k * n] = o[k];
                for (int l = 0; l < r; l++) {
                    double f = o[2 * d + k + l * d];
                    vk += f * f;
                    Vo[i + (size_t)k * n + (size_t)l * n * d] = f;
                }
                if (r > 0) Do[i + (size_t)k * n] = Dk;
                if (!R_FINITE(vk) || !R_FINITE(o[k])) return VB_NONFINITE;
                var[i + (size_t)k * n] = vk;
            }
        }
        if (vb_interrupted()) return VB_INTERRUPTED;
    }
    return VB_OK;
}

SEXP C_amortized_encode(SEXP enc, SEXP theta, SEXP y) {
    const char *w = "encoder";
    int d = vb_int_elt(enc, "latent_dim", 1, 10000, w);
    int r = vb_int_elt(enc, "rank", 0, d, w);
    vb_mlp net;
    net.act = vb_int_elt(enc, "activation", VB_ACT_TANH, VB_ACT_SOFTPLUS, w);
    SEXP sz = vb_elt_req(enc, "sizes", w);
    if (TYPEOF(sz) != INTSXP || Rf_length(sz) < 2 || Rf_length(sz) > VB_MLP_MAXL + 1)
        Rf_error("'encoder$sizes' must be an integer vector of 2 to %d layer widths",
                 VB_MLP_MAXL + 1);
    net.L = Rf_length(sz) - 1;
    net.size = INTEGER(sz);
    for (int l = 0; l <= net.L; l++)
        if (net.size[l] == NA_INTEGER || net.size[l] < 1 || net.size[l] > 100000)
            Rf_error("'encoder$sizes' must be widths between 1 and 100000");
    if (net.size[net.L] != d * (2 + r))
        Rf_error("'encoder$sizes' must end with latent_dim * (2 + rank)");
    int N = net.size[0];
    amz_input in;
    in.transform = vb_int_elt(enc, "transform", AMZ_IDENTITY, AMZ_SQRT, w);
    in.counts = vb_flag_elt(enc, "counts", w);
    in.center = vb_real_elt(enc, "center", N, w);
    in.scale = vb_real_elt(enc, "scale", N, w);
    for (int j = 0; j < N; j++)
        if (!R_FINITE(in.center[j]) || !R_FINITE(in.scale[j]) || !(in.scale[j] > 0))
            Rf_error("'encoder$center' must be finite and 'encoder$scale' positive");
    for (int k = 0; k < AMZ_TAB; k++)
        in.tab[k] = in.transform == AMZ_LOG1P ? log1p((double)k) : sqrt((double)k);
    size_t nenc = vb_mlp_nparam(net.L, net.size);
    if (TYPEOF(theta) != REALSXP || (size_t)Rf_xlength(theta) < nenc)
        Rf_error("'theta' must be a double vector with the %.0f encoder parameters first",
                 (double)nenc);
    for (size_t k = 0; k < nenc; k++)
        if (!R_FINITE(REAL(theta)[k])) Rf_error("'theta' must be finite");
    if ((TYPEOF(y) != REALSXP && TYPEOF(y) != INTSXP) || !Rf_isMatrix(y) || Rf_ncols(y) != N)
        Rf_error("'y' must be a double or integer matrix with %d columns (units)", N);
    int n = Rf_nrows(y), Bmax = n < 256 ? (n > 0 ? n : 1) : 256;
    double *X = (double *)R_alloc((size_t)N * Bmax, sizeof(double));
    double *acts = (double *)R_alloc(vb_mlp_nacts(net.L, net.size, Bmax) + 1, sizeof(double));
    double *out = (double *)R_alloc((size_t)net.size[net.L] * Bmax, sizeof(double));
    int np = 0;
    const char *nm[] = {"mean", "var", "D", "V", "status", "bad_trial", "bad_kind", ""};
    SEXP res = vb_named_list(nm, &np);
    SEXP mean = Rf_allocMatrix(REALSXP, n, d);
    SET_VECTOR_ELT(res, 0, mean);
    SEXP var = Rf_allocMatrix(REALSXP, n, d);
    SET_VECTOR_ELT(res, 1, var);
    SEXP Do = Rf_allocMatrix(REALSXP, r > 0 ? n : 0, d);
    SET_VECTOR_ELT(res, 2, Do);
    SEXP Vo = Rf_allocVector(REALSXP, (R_xlen_t)(r > 0 ? n : 0) * d * r);
    SET_VECTOR_ELT(res, 3, Vo);
    int kind = 0, bad = -1;
    int isint = TYPEOF(y) == INTSXP;
    int status =
        encode(&net, REAL(theta), d, r, isint ? NULL : REAL(y), isint ? INTEGER(y) : NULL, n, N,
               &in, Bmax, X, acts, out, REAL(mean), REAL(var), REAL(Do), REAL(Vo), &kind, &bad);
    SET_VECTOR_ELT(res, 4, Rf_ScalarInteger(status));
    SET_VECTOR_ELT(res, 5, Rf_ScalarInteger(bad + 1));
    SET_VECTOR_ELT(res, 6, Rf_ScalarInteger(kind));
    UNPROTECT(np);
    return res;
}

/* ------------------------------------------------------ refinement -- */

typedef struct {
    const amz_model *M;
    const double *C, *dv, *lpsi, *yi;
    double off, cst;
    double *m, *v, *dm, *dvv, *mt, *vt; /* current, step, trial */
    double *mu, *s, *w, *fm, *fs;       /* per unit */
    double *V, *U, *kw, *gD, *gV;       /* low rank: factor, C V, lr_kl work, its gradient */
} refine_ctx;

/* Unit j's expected log-likelihood (up to R->cst) at eta_j ~ N(mu, s), with
 * its derivatives in mu (fm) and s (fs) and the Newton weight w stored. */
static double unit_term(refine_ctx *R, int j, double mu, double s) {
    const amz_model *M = R->M;
    if (M->family == VB_POISSON) {
        double w = exp(mu + 0.5 * s);
        R->fm[j] = R->yi[j] - w;
        R->fs[j] = -0.5 * w;
        R->w[j] = w;
        return R->yi[j] * mu - w;
    }
    double lp = R->lpsi[M->npsi == 1 ? 0 : j], ip = exp(-lp), e = R->yi[j] - mu;
    R->fm[j] = ip * e;
    R->fs[j] = -0.5 * ip;
    R->w[j] = ip;
    return -0.5 * lp - 0.5 * ip * (e * e + s);
}

/* ELBO_i at (m, v); with grad: fm, fs, w (the Hessian weights) filled. */
static double trial_elbo(refine_ctx *R, const double *m, const double *v) {
    const amz_model *M = R->M;
    int N = M->N, d = M->d;
    double ll = R->cst, kl = 0;
    for (int k = 0; k < d; k++) {
        if (!(v[k] > 0)) return R_NegInf;
        kl += 0.5 * (m[k] * m[k] + v[k] - log(v[k]) - 1);
    }
    for (int j = 0; j < N; j++) {
        double mu = R->dv[j] + R->off, s = 0;
        for (int k = 0; k < d; k++) {
            double c = R->C[j + (size_t)k * N];
            mu += c * m[k];
            s += c * c * v[k];
        }
        ll += unit_term(R, j, mu, s);
    }
    return ll - kl;
}

static int refine_try(double a, void *ctx, double *value) {
    refine_ctx *R = (refine_ctx *)ctx;
    int d = R->M->d;
    for (int k = 0; k < d; k++) {
        R->mt[k] = R->m[k] + a * R->dm[k];
        R->vt[k] = R->v[k] + a * R->dvv[k];
        if (!(R->vt[k] > 0)) return VB_STALLED; /* outside the family: halve */
    }
    *value = trial_elbo(R, R->mt, R->vt);
    return R_FINITE(*value) ? VB_OK : VB_NONFINITE;
}

/*
 * Up to `steps` refinement steps (fixed point in v, then Newton) for one trial from (m, v) (updated
 * in place); stops early when the ELBO change meets tol.  A is N x 2d scratch, H 2d x 2d, g 2d, xw
 * work for vb_xtwx (N x 2d).  Returns VB_OK (tol met), VB_MAXIT, VB_STALLED (no improving step: at
 * the optimum to rounding), VB_NOT_PD, VB_NONFINITE.  *e0, *e1: ELBO before and after; *used: steps
 * taken.
 */
static int refine_one(refine_ctx *R, int steps, double tol, double *A, double *H, double *g,
                      double *xw, double *e0, double *e1, int *used) {
    const amz_model *M = R->M;
    int N = M->N, d = M->d, d2 = 2 * d;
    double e = trial_elbo(R, R->m, R->v);
    *e0 = e;
    *used = 0;
    if (!R_FINITE(e)) {
        *e1 = e;
        return VB_NONFINITE;
    }
    int status = steps > 0 ? VB_MAXIT : VB_OK;
    for (int it = 0; it < steps; it++) {
        /* the variances' fixed point v_k = 1 / (1 - 2 sum_j C_jk^2 F_s,j) first (exact for
           the gaussian decoder, whose F_s does not depend on v), with step halving */
        for (int k = 0; k < d; k++) {
            double a = 1;
            for (int j = 0; j < N; j++) {
                double c = R->C[j + (size_t)k * N];
                a -= 2 * c * c * R->fs[j];
            }
            R->dm[k] = 0;
            R->dvv[k] = 1 / a - R->v[k];
        }
        {
            double a, val;
            if (vb_step_search(refine_try, R, e, &a, &val) == VB_OK) {
                memcpy(R->v, R->vt, sizeof(double) * d);
                e = trial_elbo(R, R->m, R->v);
            } else
                trial_elbo(R, R->m, R->v); /* restore fm, fs, w at the current point */
        }
        /* then a joint Newton step: gradient and -Hessian at the current point */
        for (int k = 0; k < d; k++) {
            double gm = -R->m[k], gv = -0.5 + 0.5 / R->v[k];
            for (int j = 0; j < N; j++) {
                double c = R->C[j + (size_t)k * N];
                gm += c * R->fm[j];
                gv += c * c * R->fs[j];
                A[j + (size_t)k * N] = c;
                A[j + (size_t)(d + k) * N] = M->family == VB_POISSON ? 0.5 * c * c : 0;
            }
            g[k] = gm;
            g[d + k] = gv;
        }
        vb_xtwx(N, d2, A, N, R->w, xw, H);
        for (int k = 0; k < d; k++) {
            H[k + (size_t)k * d2] += 1;
            H[d + k + (size_t)(d + k) * d2] += 0.5 / (R->v[k] * R->v[k]);
        }
        int info = vb_chol(d2, H, d2);
        if (info != 0) {
            status = vb_lapack_status(info);
            break;
        }
        memcpy(R->dm, g, sizeof(double) * d2); /* dm and dvv are adjacent */
        vb_chol_solve(d2, H, d2, R->dm);
        double a, val;
        int st = vb_step_search(refine_try, R, e, &a, &val);
        if (st != VB_OK) {
            status = st;
            break;
        }
        memcpy(R->m, R->mt, sizeof(double) * d);
        memcpy(R->v, R->vt, sizeof(double) * d);
        double old = e;
        e = trial_elbo(R, R->m, R->v);
        *used = it + 1;
        if (vb_tol_met(old, e, tol)) {
            status = VB_OK;
            break;
        }
    }
    *e1 = e;
    return status;
}

/* ---------------------------------------------- low-rank refinement -- */

/*
 * ELBO_i at (m, D, V) for the low-rank family, with fm, fs, w (the Newton
 * weights) filled; with gpar != NULL also its gradient in (log D, V).
 * O(N d r).  -Inf outside the family.
 */
static double lr_trial_elbo(refine_ctx *R, const double *m, const double *D, const double *V,
                            double *gpar) {
    const amz_model *M = R->M;
    int N = M->N, d = M->d, r = M->r;
    double ll = R->cst, kl = 0, klc;
    for (int k = 0; k < d; k++) {
        if (!(D[k] > 0) || !R_FINITE(D[k])) return R_NegInf;
        kl += 0.5 * m[k] * m[k];
    }
    if (lr_kl(d, r, D, V, &klc, gpar ? R->gD : NULL, gpar ? R->gV : NULL, R->kw) != VB_OK)
        return R_NegInf;
    kl += klc;
    for (int j = 0; j < N; j++) {
        double mu = R->dv[j] + R->off, s = 0;
        for (int k = 0; k < d; k++) {
            double c = R->C[j + (size_t)k * N];
            mu += c * m[k];
            s += c * c * D[k];
        }
        for (int l = 0; l < r; l++) {
            double u = 0;
            for (int k = 0; k < d; k++)
                u += R->C[j + (size_t)k * N] * V[k + (size_t)l * d];
            R->U[j + (size_t)l * N] = u;
            s += u * u;
        }
        ll += unit_term(R, j, mu, s);
    }
    if (gpar) {
        for (int k = 0; k < d; k++) {
            double a = 0;
            for (int j = 0; j < N; j++) {
                double c = R->C[j + (size_t)k * N];
                a += c * c * R->fs[j];
            }
            gpar[k] = D[k] * (a + R->gD[k]);
            for (int l = 0; l < r; l++) {
                double b = 0;
                for (int j = 0; j < N; j++)
                    b += R->C[j + (size_t)k * N] * R->fs[j] * R->U[j + (size_t)l * N];
                gpar[d + k + l * d] = 2 * b + R->gV[k + (size_t)l * d];
            }
        }
    }
    return ll - kl;
}

/* vmmin's objective and gradient: -ELBO_i in (log D, V) at the current m */
static void lr_par(refine_ctx *R, const double *par) {
    int d = R->M->d;
    for (int k = 0; k < d; k++)
        R->vt[k] = exp(par[k]);
}
static double lr_fn(int np, double *par, void *ex) {
    refine_ctx *R = (refine_ctx *)ex;
    (void)np;
    lr_par(R, par);
    double e = lr_trial_elbo(R, R->m, R->vt, par + R->M->d, NULL);
    return R_FINITE(e) ? -e : R_PosInf;
}
static void lr_gr(int np, double *par, double *g, void *ex) {
    refine_ctx *R = (refine_ctx *)ex;
    lr_par(R, par);
    double e = lr_trial_elbo(R, R->m, R->vt, par + R->M->d, g);
    for (int k = 0; k < np; k++)
        g[k] = R_FINITE(e) ? -g[k] : 0;
}

static int lr_try_m(double a, void *ctx, double *value) {
    refine_ctx *R = (refine_ctx *)ctx;
    int d = R->M->d;
    for (int k = 0; k < d; k++)
        R->mt[k] = R->m[k] + a * R->dm[k];
    *value = lr_trial_elbo(R, R->mt, R->v, R->V, NULL);
    return R_FINITE(*value) ? VB_OK : VB_NONFINITE;
}

/*
 * Up to `steps` low-rank refinement steps for one trial from (m, D = R->v,
 * V = R->V), updated in place: a Newton step in m (the ELBO is concave in m
 * for a fixed Sigma, -H = I + C'diag(w)C) with step halving, then BFGS in
 * (log D, V) with m fixed (vmmin; a point that is not better is not taken).
 * H: d x d, g: d, xw: N x d, par: 2 d (1 + r), mask: d (1 + r).  Status as
 * refine_one(); VB_OK needs a step that changed the ELBO by at most tol after
 * a BFGS run that met its own criterion.
 */
static int refine_lr_one(refine_ctx *R, int steps, double tol, double *H, double *g, double *xw,
                         double *par, int *mask, double *e0, double *e1, int *used) {
    const amz_model *M = R->M;
    int N = M->N, d = M->d, r = M->r, np = d * (1 + r);
    double e = lr_trial_elbo(R, R->m, R->v, R->V, NULL);
    *e0 = e;
    *used = 0;
    if (!R_FINITE(e)) {
        *e1 = e;
        return VB_NONFINITE;
    }
    int status = steps > 0 ? VB_MAXIT : VB_OK;
    for (int it = 0; it < steps; it++) {
        double old = e;
        for (int k = 0; k < d; k++) {
            double gm = -R->m[k];
            for (int j = 0; j < N; j++)
                gm += R->C[j + (size_t)k * N] * R->fm[j];
            g[k] = gm;
        }
        vb_xtwx(N, d, R->C, N, R->w, xw, H);
        for (int k = 0; k < d; k++)
            H[k + (size_t)k * d] += 1;
        int info = vb_chol(d, H, d);
        if (info != 0) {
            status = vb_lapack_status(info);
            break;
        }
        memcpy(R->dm, g, sizeof(double) * d);
        vb_chol_solve(d, H, d, R->dm);
        double a, val;
        if (vb_step_search(lr_try_m, R, e, &a, &val) == VB_OK) {
            memcpy(R->m, R->mt, sizeof(double) * d);
            e = val;
        }
        for (int k = 0; k < d; k++)
            par[k] = log(R->v[k]);
        memcpy(par + d, R->V, sizeof(double) * d * r);
        double fmin = -e;
        int fc = 0, gc = 0, fail = 0;
        memcpy(par + np, par, sizeof(double) * np); /* the start, to fall back on */
        vmmin(np, par, &fmin, lr_fn, lr_gr, 2 * np + 10, 0, mask, R_NegInf, 1e-15, 1, R, &fc, &gc,
              &fail);
        double enew = R_NegInf;
        if (R_FINITE(fmin) && -fmin >= e) {
            lr_par(R, par);
            enew = lr_trial_elbo(R, R->m, R->vt, par + d, NULL);
        }
        if (R_FINITE(enew) && enew >= e) {
            memcpy(R->v, R->vt, sizeof(double) * d);
            memcpy(R->V, par + d, sizeof(double) * d * r);
        }
        e = lr_trial_elbo(R, R->m, R->v, R->V, NULL);
        *used = it + 1;
        if (!R_FINITE(e)) {
            status = VB_NONFINITE;
            break;
        }
        if (fail == 0 && vb_tol_met(old, e, tol)) {
            status = VB_OK;
            break;
        }
    }
    *e1 = e;
    return status;
}

SEXP C_amortized_refine(SEXP model, SEXP theta, SEXP q, SEXP control) {
    amz_model M;
    amz_unpack(model, &M);
    const double *th = theta_elt(theta, &M, "theta");
    int n = M.n, d = M.d, N = M.N, r = M.r, d2 = 2 * d;
    SEXP m = vb_elt_req(q, "m", "q"), v = vb_elt_req(q, "v", "q"), Vq = vb_elt_req(q, "V", "q");
    if (TYPEOF(m) != REALSXP || TYPEOF(v) != REALSXP || TYPEOF(Vq) != REALSXP ||
        Rf_xlength(m) != (R_xlen_t)d * n || Rf_xlength(v) != (R_xlen_t)d * n ||
        Rf_xlength(Vq) != (R_xlen_t)d * r * n)
        Rf_error("'q$m' and 'q$v' must be double matrices latent_dim x trials, 'q$V' "
                 "(latent_dim * rank) x trials");
    for (R_xlen_t k = 0; k < (R_xlen_t)d * n; k++)
        if (!R_FINITE(REAL(m)[k]) || !R_FINITE(REAL(v)[k]) || !(REAL(v)[k] > 0))
            Rf_error("'q$m' must be finite and 'q$v' positive and finite");
    for (R_xlen_t k = 0; k < Rf_xlength(Vq); k++)
        if (!R_FINITE(REAL(Vq)[k])) Rf_error("'q$V' must be finite");
    int steps = vb_int_elt(control, "steps", 0, 1000000, "control");
    double tol = vb_num_elt(control, "tol", 0, 1, "control");
    if (!(tol > 0)) Rf_error("'control$tol' must be positive");
    int np = 0;
    const char *nm[] = {"m", "v", "elbo_before", "elbo", "steps", "status", "D", "V", ""};
    SEXP out = vb_named_list(nm, &np);
    SEXP mo = Rf_allocMatrix(REALSXP, d, n);
    SET_VECTOR_ELT(out, 0, mo);
    SEXP vo = Rf_allocMatrix(REALSXP, d, n);
    SET_VECTOR_ELT(out, 1, vo);
    SEXP e0 = Rf_allocVector(REALSXP, n);
    SET_VECTOR_ELT(out, 2, e0);
    SEXP e1 = Rf_allocVector(REALSXP, n);
    SET_VECTOR_ELT(out, 3, e1);
    SEXP us = Rf_allocVector(INTSXP, n);
    SET_VECTOR_ELT(out, 4, us);
    SEXP ss = Rf_allocVector(INTSXP, n);
    SET_VECTOR_ELT(out, 5, ss);
    SEXP Do = Rf_allocMatrix(REALSXP, d, n);
    SET_VECTOR_ELT(out, 6, Do);
    SEXP Vo = Rf_allocMatrix(REALSXP, d * r, n);
    SET_VECTOR_ELT(out, 7, Vo);
    memcpy(REAL(mo), REAL(m), sizeof(double) * (size_t)d * n);
    memcpy(REAL(Do), REAL(v), sizeof(double) * (size_t)d * n);
    if (r > 0) memcpy(REAL(Vo), REAL(Vq), sizeof(double) * (size_t)d * r * n);
    refine_ctx R;
    R.M = &M;
    R.C = th + M.nenc;
    R.dv = R.C + (size_t)N * d;
    R.lpsi = R.dv + N;
    double *buf = (double *)R_alloc((size_t)4 * d2, sizeof(double));
    R.dm = buf;
    R.dvv = buf + d;
    R.mt = buf + d2;
    R.vt = buf + d2 + d;
    double *nb = (double *)R_alloc((size_t)5 * N, sizeof(double));
    R.mu = nb;
    R.s = nb + N;
    R.w = nb + 2 * N;
    R.fm = nb + 3 * N;
    R.fs = nb + 4 * N;
    double *A = (double *)R_alloc((size_t)N * d2, sizeof(double));
    double *xw = (double *)R_alloc((size_t)N * d2, sizeof(double));
    double *H = (double *)R_alloc((size_t)d2 * d2, sizeof(double));
    double *g = buf + 2 * d2;
    double *par = NULL;
    int *mask = NULL;
    if (r > 0) {
        R.U = (double *)R_alloc((size_t)N * r, sizeof(double));
        R.kw = (double *)R_alloc((size_t)d * d, sizeof(double));
        R.gD = (double *)R_alloc(d, sizeof(double));
        R.gV = (double *)R_alloc((size_t)d * r, sizeof(double));
        par = (double *)R_alloc((size_t)2 * d * (1 + r), sizeof(double));
        mask = (int *)R_alloc((size_t)d * (1 + r), sizeof(int));
        for (int k = 0; k < d * (1 + r); k++)
            mask[k] = 1;
    }
    for (int i = 0; i < n; i++) {
        R.yi = M.y + (size_t)i * N;
        R.off = M.off[i];
        R.cst = M.cst[i];
        R.m = REAL(mo) + (size_t)i * d;
        R.v = REAL(Do) + (size_t)i * d;
        if (r > 0) {
            R.V = REAL(Vo) + (size_t)i * d * r;
            INTEGER(ss)
            [i] = refine_lr_one(&R, steps, tol, H, g, xw, par, mask, REAL(e0) + i, REAL(e1) + i,
                                INTEGER(us) + i);
        } else
            INTEGER(ss)
        [i] = refine_one(&R, steps, tol, A, H, g, xw, REAL(e0) + i, REAL(e1) + i, INTEGER(us) + i);
        for (int k = 0; k < d; k++) {
            double vk = R.v[k];
            for (int l = 0; l < r; l++)
                vk += R.V[k + l * d] * R.V[k + l * d];
            REAL(vo)[k + (size_t)i * d] = vk;
        }
        if (vb_interrupted()) {
            for (int k = i + 1; k < n; k++) {
                REAL(e0)[k] = REAL(e1)[k] = NA_REAL;
                INTEGER(us)[k] = 0;
                INTEGER(ss)[k] = VB_INTERRUPTED;
            }
            break;
        }
    }
    UNPROTECT(np);
    return out;
}
