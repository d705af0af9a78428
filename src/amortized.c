/*
 * amortized.c — amortized variational inference for latent-factor models of
 * trials (vb_amortized()).
 *
 * Model: z_i ~ N(0, I_d), i = 1..n trials; N units with decoder
 *   poisson:  y_ij ~ Poisson(exp(c_j'z_i + d_j + o_i)),  o_i = log exposure
 *   gaussian: y_ij ~ N(c_j'z_i + d_j, psi_j)   (psi shared: pPCA; else factor analysis)
 * Encoder: q(z_i | y_i) = N(m_i, diag v_i), (m_i, log v_i) = mlp(x_i), x_i the
 * transformed counts (mlp.c).  With mu_ij = c_j'm_i + d_j + o_i and
 * s_ij = sum_k C_jk^2 v_ik the per-trial ELBO is closed form:
 *   ELBO_i = sum_j f(y_ij; mu_ij, s_ij) + const_i - 1/2 sum_k (m_ik^2 + v_ik - log v_ik - 1)
 *   poisson  f = y mu - exp(mu + s/2)                  (E e^eta exact)
 *   gaussian f = -1/2 log psi_j - ((y - mu)^2 + s) / (2 psi_j)
 * so its gradients are exact (no Monte Carlo): with F_mu = df/dmu, F_s = df/ds,
 *   dELBO/dm = C'F_mu - m,   dELBO/dv = (C o C)'F_s - 1/2 + 1/(2v),
 *   dELBO/dC = F_mu m' + 2 C o (F_s v'),   dELBO/dd = F_mu,
 *   dELBO/dlog psi_j = -1/2 + ((y - mu)^2 + s) / (2 psi_j),
 * and the encoder gradient comes from back-propagating (dm, v dELBO/dv).
 * Parameters: one vector theta = (encoder, C (N x d), d (N), log psi (0, 1 or N)).
 *
 * Training (C_amortized_fit): Adam on minibatch means of ELBO_i over the
 * training trials, shuffled each epoch with R's RNG; after each epoch the
 * mean ELBO of the validation trials (or, without any, the epoch's training
 * mean) is the stopping criterion: after `patience` epochs without a relative
 * improvement of more than tol the step size halves and training restarts
 * from the best parameters, and after `decays` such halvings it stops
 * (VB_OK).  The best parameters are returned.  Cost per epoch
 * O(n (encoder flops + 4 N d)), memory O(batch x widths) beyond the data.
 *
 * Refinement (C_amortized_refine): per trial, steps on the concave
 * ELBO_i(m, v) (jointly concave: log-normal mean is convex in (mu, s), the
 * entropy concave) from the encoder output, each a fixed-point update of v,
 * v_k = 1 / (1 + sum_j C_jk^2 w_j), then a joint Newton step in (m, v), both
 * with step halving (so the ELBO never decreases):
 *   -H = A'diag(w)A + diag(1_d, 1/(2 v^2)),  A = [C, C o C / 2], w_j = e^(mu_j + s_j/2)
 * (gaussian: A = [C, 0], w = 1/psi), a 2d x 2d Cholesky solve per step,
 * O(N d^2 + d^3).  Converges to the per-trial optimum q*_i.
 *
 * C_amortized_eval: (m, v, ELBO_i) for every trial, and optionally the
 * gradient of sum_i ELBO_i in theta (for finite-difference tests); with
 * opts$draws = S > 0 the reparameterised S-draw Monte Carlo estimates of both
 * instead (the single-sample estimator of Kingma & Welling, to check the closed
 * forms; also available for training, control$draws).
 */
#include "mlp.h"
#include "vbayes.h"

typedef struct {
    int n, N, d, family, npsi, learn_dec;
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
    if (M->size[0] != M->N || M->size[M->L] != 2 * M->d)
        Rf_error("'model$sizes' must start with the number of units and end with 2 * latent_dim");
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

/* ------------------------------------------------ minibatch ELBO -- */

typedef struct {
    int B; /* capacity */
    double *X, *acts, *out, *V, *Mu, *S, *Fm, *Fs, *dout, *scr, *C2, *tmp;
} amz_work;

static void work_alloc(const amz_model *M, int B, amz_work *W) {
    int N = M->N, d = M->d;
    size_t NB = (size_t)N * B;
    W->B = B;
    W->X = (double *)R_alloc(NB, sizeof(double));
    W->acts = (double *)R_alloc(vb_mlp_nacts(M->L, M->size, B) + 1, sizeof(double));
    W->out = (double *)R_alloc((size_t)2 * d * B, sizeof(double));
    W->dout = (double *)R_alloc((size_t)2 * d * B, sizeof(double));
    W->V = (double *)R_alloc((size_t)d * B, sizeof(double));
    W->Mu = (double *)R_alloc(NB, sizeof(double));
    W->S = (double *)R_alloc(NB, sizeof(double));
    W->Fm = (double *)R_alloc(NB, sizeof(double));
    W->Fs = (double *)R_alloc(NB, sizeof(double));
    W->scr = (double *)R_alloc((size_t)2 * vb_mlp_maxwidth(M->L, M->size) * B, sizeof(double));
    W->C2 = (double *)R_alloc((size_t)N * d, sizeof(double));
    W->tmp = (double *)R_alloc((size_t)N * d > (size_t)3 * d ? (size_t)N * d : (size_t)3 * d,
                               sizeof(double));
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
 * are not NULL, the encoder's q (d x B each).  With grad != NULL adds the
 * gradient of sum_b ELBO_b to grad (length P; the decoder part only when
 * learn_dec or all_grad).  Returns VB_OK or VB_NONFINITE.
 */
static int batch_elbo(const amz_model *M, const double *theta, const int *idx, int B, amz_work *W,
                      double *elbo, double *m, double *v, double *grad, int all_grad) {
    int N = M->N, d = M->d, d2 = 2 * d;
    double one = 1.0, zero = 0.0;
    const double *C = theta + M->nenc, *dv = C + (size_t)N * d, *lpsi = dv + N;
    for (size_t k = 0; k < (size_t)N * d; k++)
        W->C2[k] = C[k] * C[k];
    for (int b = 0; b < B; b++)
        memcpy(W->X + (size_t)b * N, M->x + (size_t)idx[b] * N, sizeof(double) * N);
    vb_mlp_forward(&M->net, theta, B, W->X, W->acts, W->out, d2);
    for (int b = 0; b < B; b++)
        for (int k = 0; k < d; k++) {
            double r = W->out[d + k + (size_t)b * d2];
            W->V[k + (size_t)b * d] = exp(r);
        }
    /* Mu = C m + d + o, S = (C o C) v */
    F77_CALL(dgemm)("N", "N", &N, &B, &d, &one, C, &N, W->out, &d2, &zero, W->Mu, &N FCONE FCONE);
    F77_CALL(dgemm)("N", "N", &N, &B, &d, &one, W->C2, &N, W->V, &d, &zero, W->S, &N FCONE FCONE);
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
                double lp = lpsi[M->npsi == 1 ? 0 : j], ip = exp(-lp), r = yi[j] - mu[j];
                ll += -0.5 * lp - 0.5 * ip * (r * r + s[j]);
                fm[j] = ip * r;
                fs[j] = -0.5 * ip;
            }
        }
        for (int k = 0; k < d; k++) {
            double mk = W->out[k + (size_t)b * d2], vk = W->V[k + (size_t)b * d];
            double lv = W->out[d + k + (size_t)b * d2];
            kl += 0.5 * (mk * mk + vk - lv - 1);
            if (m) m[k + (size_t)b * d] = mk;
            if (v) v[k + (size_t)b * d] = vk;
        }
        elbo[b] = ll - kl;
        if (!R_FINITE(elbo[b])) bad = 1;
    }
    if (bad) return VB_NONFINITE;
    if (M->draws > 0) return mc_elbo(M, theta, idx, B, W, elbo, grad, all_grad);
    if (!grad) return VB_OK;
    /* encoder outputs: dm = C'F_mu - m, dlogv = v ((C o C)'F_s - 1/2) + 1/2 */
    F77_CALL(dgemm)("T", "N", &d, &B, &N, &one, C, &N, W->Fm, &N, &zero, W->dout, &d2 FCONE FCONE);
    F77_CALL(dgemm)
    ("T", "N", &d, &B, &N, &one, W->C2, &N, W->Fs, &N, &zero, W->dout + d, &d2 FCONE FCONE);
    for (int b = 0; b < B; b++)
        for (int k = 0; k < d; k++) {
            double *g = W->dout + (size_t)b * d2;
            double vk = W->V[k + (size_t)b * d];
            g[k] -= W->out[k + (size_t)b * d2];
            g[d + k] = vk * (g[d + k] - 0.5) + 0.5;
        }
    vb_mlp_backward(&M->net, theta, B, W->X, W->acts, W->dout, d2, grad, W->scr);
    if (!M->learn_dec && !all_grad) return VB_OK;
    /* decoder: dC = F_mu m' + 2 C o (F_s v'), dd = rowsums F_mu */
    double *gC = grad + M->nenc, *gd = gC + (size_t)N * d, *gp = gd + N;
    F77_CALL(dgemm)("N", "T", &N, &d, &B, &one, W->Fm, &N, W->out, &d2, &one, gC, &N FCONE FCONE);
    F77_CALL(dgemm)("N", "T", &N, &d, &B, &one, W->Fs, &N, W->V, &d, &zero, W->tmp, &N FCONE FCONE);
    for (size_t k = 0; k < (size_t)N * d; k++)
        gC[k] += 2 * C[k] * W->tmp[k];
    for (int b = 0; b < B; b++) {
        int i = idx[b];
        const double *yi = M->y + (size_t)i * N, *fm = W->Fm + (size_t)b * N;
        const double *mu = W->Mu + (size_t)b * N, *s = W->S + (size_t)b * N;
        for (int j = 0; j < N; j++) {
            gd[j] += fm[j];
            if (M->npsi > 0) {
                double ip = exp(-lpsi[M->npsi == 1 ? 0 : j]), r = yi[j] - mu[j];
                gp[M->npsi == 1 ? 0 : j] += -0.5 + 0.5 * ip * (r * r + s[j]);
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
    int epochs, batch, patience, decays, quiet;
    double lr, tol;
} amz_settings;

typedef struct {
    double *theta;   /* in: start, out: best */
    double *tr, *va; /* per-epoch mean training / validation ELBO */
    int epochs, decays_used;
    double best;
} amz_result;

static int train(const amz_model *M, const amz_settings *S, const int *tidx, int ntr,
                 const int *vidx, int nva, amz_result *R) {
    size_t P = M->P;
    int B = S->batch < ntr ? S->batch : ntr;
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
    double lr = S->lr, b1 = 0.9, b2 = 0.999, t = 0, bestv = R_NegInf;
    int stall = 0, status = VB_MAXIT;
    vb_progress pr;
    vb_progress_init(&pr, S->quiet);
    R->epochs = 0;
    R->decays_used = 0;
    for (int ep = 0; ep < S->epochs; ep++) {
        for (int i = ntr - 1; i > 0; i--) { /* Fisher-Yates with R's generator */
            int j = (int)floor(unif_rand() * (i + 1));
            if (j > i) j = i;
            int tmp = perm[i];
            perm[i] = perm[j];
            perm[j] = tmp;
        }
        double sum = 0;
        int st = VB_OK;
        for (int i0 = 0; i0 + B <= ntr; i0 += B) { /* full batches; the rest wait a turn */
            memset(g, 0, sizeof(double) * P);
            st = batch_elbo(M, th, perm + i0, B, &W, eb, NULL, NULL, g, 0);
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
        double val = sum / ((ntr / B) * B);
        if (st == VB_OK && nva > 0) st = mean_elbo(M, th, vidx, nva, &W, eb, &val);
        if (st != VB_OK) {
            status = st;
            break;
        }
        R->tr[ep] = sum / ((ntr / B) * B);
        R->va[ep] = val;
        R->epochs = ep + 1;
        vb_progress_tick(&pr, "vb_amortized()", ep + 1, val);
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
    S.patience = vb_int_elt(control, "patience", 1, 1000000, w);
    S.decays = vb_int_elt(control, "decays", 0, 1000, w);
    S.lr = vb_num_elt(control, "step_size", 0, 1e6, w);
    S.tol = vb_num_elt(control, "tol", 0, 1, w);
    S.quiet = vb_flag_elt(control, "quiet", w);
    M.draws = vb_int_elt(control, "draws", 0, 100000, w);
    if (!(S.lr > 0) || !(S.tol > 0))
        Rf_error("'control$step_size' and 'control$tol' must be positive");
    int *tidx, *vidx;
    int ntr = read_index(vb_elt_req(control, "train", w), M.n, "control$train", &tidx);
    int nva = read_index(vb_elt_req(control, "validation", w), M.n, "control$validation", &vidx);
    if (ntr < 1) Rf_error("'control$train' must name at least one trial");
    amz_result R;
    R.theta = (double *)R_alloc(M.P, sizeof(double));
    memcpy(R.theta, th0, sizeof(double) * M.P);
    R.tr = (double *)R_alloc(S.epochs, sizeof(double));
    R.va = (double *)R_alloc(S.epochs, sizeof(double));
    GetRNGstate();
    int status = train(&M, &S, tidx, ntr, vidx, nva, &R);
    PutRNGstate();
    int np = 0;
    const char *nm[] = {"theta", "train_trace", "validation_trace", "epochs", "decays",
                        "best",  "status",      "converged",        ""};
    SEXP out = vb_named_list(nm, &np);
    SET_VECTOR_ELT(out, 0, vb_real_vec(M.P, R.theta));
    SET_VECTOR_ELT(out, 1, vb_real_vec(R.epochs, R.tr));
    SET_VECTOR_ELT(out, 2, vb_real_vec(R.epochs, R.va));
    SET_VECTOR_ELT(out, 3, Rf_ScalarInteger(R.epochs));
    SET_VECTOR_ELT(out, 4, Rf_ScalarInteger(R.decays_used));
    SET_VECTOR_ELT(out, 5, Rf_ScalarReal(R.best));
    SET_VECTOR_ELT(out, 6, Rf_ScalarInteger(status));
    SET_VECTOR_ELT(out, 7, Rf_ScalarLogical(status == VB_OK));
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
    int B = n < 512 ? n : 512;
    amz_work W;
    work_alloc(&M, B, &W);
    int *idx = (int *)R_alloc(B, sizeof(int));
    int np = 0;
    const char *nm[] = {"m", "v", "elbo", "grad", "status", ""};
    SEXP out = vb_named_list(nm, &np);
    SEXP m = Rf_allocMatrix(REALSXP, d, n);
    SET_VECTOR_ELT(out, 0, m);
    SEXP v = Rf_allocMatrix(REALSXP, d, n);
    SET_VECTOR_ELT(out, 1, v);
    SEXP e = Rf_allocVector(REALSXP, n);
    SET_VECTOR_ELT(out, 2, e);
    SEXP g = Rf_allocVector(REALSXP, wg ? (R_xlen_t)M.P : 0);
    SET_VECTOR_ELT(out, 3, g);
    if (wg) memset(REAL(g), 0, sizeof(double) * M.P);
    int status = VB_OK;
    if (M.draws > 0) GetRNGstate();
    for (int i0 = 0; i0 < n && status == VB_OK; i0 += B) {
        int b = n - i0 < B ? n - i0 : B;
        for (int k = 0; k < b; k++)
            idx[k] = i0 + k;
        int st = batch_elbo(&M, th, idx, b, &W, REAL(e) + i0, REAL(m) + (size_t)i0 * d,
                            REAL(v) + (size_t)i0 * d, wg ? REAL(g) : NULL, 1);
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

/* ------------------------------------------------------ refinement -- */

typedef struct {
    const amz_model *M;
    const double *C, *dv, *lpsi, *yi;
    double off, cst;
    double *m, *v, *dm, *dvv, *mt, *vt; /* current, step, trial */
    double *mu, *s, *w, *fm, *fs;       /* per unit */
} refine_ctx;

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
        if (M->family == VB_POISSON) {
            double w = exp(mu + 0.5 * s);
            ll += R->yi[j] * mu - w;
            R->fm[j] = R->yi[j] - w;
            R->fs[j] = -0.5 * w;
            R->w[j] = w;
        } else {
            double lp = R->lpsi[M->npsi == 1 ? 0 : j], ip = exp(-lp), r = R->yi[j] - mu;
            ll += -0.5 * lp - 0.5 * ip * (r * r + s);
            R->fm[j] = ip * r;
            R->fs[j] = -0.5 * ip;
            R->w[j] = ip;
        }
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

SEXP C_amortized_refine(SEXP model, SEXP theta, SEXP m, SEXP v, SEXP control) {
    amz_model M;
    amz_unpack(model, &M);
    const double *th = theta_elt(theta, &M, "theta");
    int n = M.n, d = M.d, N = M.N, d2 = 2 * d;
    if (TYPEOF(m) != REALSXP || TYPEOF(v) != REALSXP || Rf_xlength(m) != (R_xlen_t)d * n ||
        Rf_xlength(v) != (R_xlen_t)d * n)
        Rf_error("'m' and 'v' must be double matrices latent_dim x trials");
    for (R_xlen_t k = 0; k < (R_xlen_t)d * n; k++)
        if (!R_FINITE(REAL(m)[k]) || !R_FINITE(REAL(v)[k]) || !(REAL(v)[k] > 0))
            Rf_error("'m' must be finite and 'v' positive and finite");
    int steps = vb_int_elt(control, "steps", 0, 1000000, "control");
    double tol = vb_num_elt(control, "tol", 0, 1, "control");
    if (!(tol > 0)) Rf_error("'control$tol' must be positive");
    int np = 0;
    const char *nm[] = {"m", "v", "elbo_before", "elbo", "steps", "status", ""};
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
    memcpy(REAL(mo), REAL(m), sizeof(double) * (size_t)d * n);
    memcpy(REAL(vo), REAL(v), sizeof(double) * (size_t)d * n);
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
    for (int i = 0; i < n; i++) {
        R.yi = M.y + (size_t)i * N;
        R.off = M.off[i];
        R.cst = M.cst[i];
        R.m = REAL(mo) + (size_t)i * d;
        R.v = REAL(vo) + (size_t)i * d;
        INTEGER(ss)
        [i] = refine_one(&R, steps, tol, A, H, g, xw, REAL(e0) + i, REAL(e1) + i, INTEGER(us) + i);
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
