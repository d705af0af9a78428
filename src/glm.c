/*
 * glm.c — Gaussian variational approximation (GVA) of Bayesian GLMs.
 *
 * Model: eta = X beta + offset; y | eta from the family (gaussian with noise
 * precision tau ~ Gamma(a0, b0), poisson with log link, binomial with logit
 * link); independent priors beta_j ~ normal(loc, scale) or laplace(loc, scale).
 *
 * q(beta) = N(mu, Sigma) with Sigma block-diagonal over a partition of the
 * coefficients (one block = fullrank, singletons = meanfield); gaussian adds
 * q(tau) = Gamma(A, B).  Every likelihood enters through the expectation
 * f_t(m_t, v_t) = E log p(y_t | eta_t) under eta_t ~ N(m_t, v_t), and every
 * prior through g_j(mu_j, Sigma_jj) = E log p(beta_j), so
 *
 *   ELBO = sum_t f_t + sum_j g_j + 1/2 log|Sigma| + p/2 (1 + log 2 pi) [+ tau terms].
 *
 * Update (per block b, "fixed-point Newton" / NCVMP, a natural-gradient step):
 *   Lambda* = X_b' diag(-2 df/dv) X_b + diag(-2 dg/ds2),  g = X_b' df/dm + dg/dmu
 *   Lambda_a = (1-a) Lambda_b + a Lambda*,   mu_b += a Lambda_a^{-1} g,
 * with a = 1, 1/2, 1/4, ... until the ELBO does not decrease, so the trace is
 * monotone.  For the gaussian family a = 1 is the exact coordinate optimum;
 * q(tau) is then updated in closed form.  m and v (the linear predictor's mean
 * and variance) are kept up to date block by block rather than recomputed.
 *
 * Cost per sweep: sum_b n k_b^2 (syrk + trsm) plus n exp() per block trial;
 * O(np) for meanfield, about 2np^2 + p^3/3 for fullrank.  Memory O(np + p^2).
 */
#include "vbayes.h"
#include <time.h>

#define LOG2PI 1.837877066409345483560659472811

/* ---------------------------------------------------------------- model -- */

static SEXP list_elt(SEXP list, const char *name) {
    SEXP names = Rf_getAttrib(list, R_NamesSymbol);
    for (R_xlen_t i = 0; i < Rf_xlength(list); i++)
        if (strcmp(CHAR(STRING_ELT(names, i)), name) == 0) return VECTOR_ELT(list, i);
    Rf_error("model list has no element '%s' (internal error)", name);
    return R_NilValue;
}

static const double *real_elt(SEXP list, const char *name, R_xlen_t len) {
    SEXP x = list_elt(list, name);
    if (!Rf_isReal(x)) Rf_error("model element '%s' must be a double vector", name);
    if (len >= 0 && Rf_xlength(x) != len)
        Rf_error("model element '%s' has length %lld, expected %lld", name,
                 (long long)Rf_xlength(x), (long long)len);
    return REAL(x);
}

/* Unpacks and checks the model list built by R's .glm_model(). */
void vb_glm_unpack(SEXP model, vb_glm *M) {
    if (TYPEOF(model) != VECSXP || Rf_isNull(Rf_getAttrib(model, R_NamesSymbol)))
        Rf_error("'model' must be a named list (internal error)");
    SEXP X = list_elt(model, "X");
    if (!Rf_isReal(X) || !Rf_isMatrix(X)) Rf_error("model element 'X' must be a double matrix");
    SEXP fam = list_elt(model, "family");
    if (!Rf_isInteger(fam) || Rf_length(fam) != 1)
        Rf_error("model element 'family' must be an integer");
    M->n = Rf_nrows(X);
    M->p = Rf_ncols(X);
    M->X = REAL(X);
    M->family = INTEGER(fam)[0];
    if (M->family < VB_GAUSSIAN || M->family > VB_BINOMIAL)
        Rf_error("unknown family code %d", M->family);
    M->y = real_elt(model, "y", M->n);
    M->off = real_elt(model, "offset", M->n);
    M->wt = real_elt(model, "weights", M->n);
    SEXP pt = list_elt(model, "prior_type");
    if (!Rf_isInteger(pt) || Rf_length(pt) != M->p)
        Rf_error("model element 'prior_type' must be an integer vector of length p");
    M->ptype = INTEGER(pt);
    M->ploc = real_elt(model, "prior_location", M->p);
    M->pscale = real_elt(model, "prior_scale", M->p);
    for (int j = 0; j < M->p; j++) {
        if (M->ptype[j] != VB_PRIOR_NORMAL && M->ptype[j] != VB_PRIOR_LAPLACE)
            Rf_error("unknown prior code %d", M->ptype[j]);
        if (!R_FINITE(M->pscale[j]) || M->pscale[j] <= 0 || !R_FINITE(M->ploc[j]))
            Rf_error("prior scales must be finite and positive, locations finite");
    }
    const double *tp = real_elt(model, "tau_prior", 2);
    M->a0 = tp[0];
    M->b0 = tp[1];
    if (!(M->a0 > 0) || !(M->b0 > 0) || !R_FINITE(M->a0) || !R_FINITE(M->b0))
        Rf_error("the gamma prior on the precision needs finite positive shape and rate");
    SEXP ghx = list_elt(model, "gh_x");
    M->ngh = Rf_length(ghx);
    M->ghx = real_elt(model, "gh_x", -1);
    M->ghw = real_elt(model, "gh_w", M->ngh);
    if (M->family == VB_BINOMIAL && M->ngh < 1) Rf_error("binomial needs a Gauss-Hermite rule");
    for (R_xlen_t i = 0; i < (R_xlen_t)M->n * M->p; i++)
        if (!R_FINITE(M->X[i])) Rf_error("the design matrix contains NA or infinite values");
    for (int t = 0; t < M->n; t++)
        if (!R_FINITE(M->y[t]) || !R_FINITE(M->off[t]) || !R_FINITE(M->wt[t]) || M->wt[t] < 0)
            Rf_error("y, offset and weights must be finite (weights non-negative)");
    for (int t = 0; t < M->n; t++) {
        if (M->family == VB_POISSON && M->y[t] < 0) Rf_error("poisson counts must be non-negative");
        if (M->family == VB_BINOMIAL && (M->y[t] < 0 || M->y[t] > M->wt[t]))
            Rf_error("binomial successes must lie between 0 and the number of trials");
    }
    M->llconst = 0;
    for (int t = 0; t < M->n; t++) {
        double y = M->y[t], w = M->wt[t];
        if (w == 0) continue;
        if (M->family == VB_GAUSSIAN)
            M->llconst += 0.5 * (log(w) - LOG2PI);
        else if (M->family == VB_POISSON)
            M->llconst -= w * lgammafn(y + 1.0);
        else
            M->llconst += lgammafn(w + 1.0) - lgammafn(y + 1.0) - lgammafn(w - y + 1.0);
    }
    M->Etau = 1.0;
    M->Elogtau = 0.0;
    M->eta = NULL;
}

/* ------------------------------------------------- expected log-lik, prior -- */

static double softplus(double x) {
    return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x));
}

/*
 * f_t = E log p(y_t | eta), eta ~ N(m, v) (m includes the offset), without the
 * terms free of eta and tau (those are summed once, in M->llconst); df/dm, df/dv.
 */
double vb_glm_obs(const vb_glm *M, int t, double m, double v, double *dm, double *dv) {
    double y = M->y[t], w = M->wt[t];
    if (w == 0) {
        *dm = *dv = 0;
        return 0;
    }
    switch (M->family) {
    case VB_GAUSSIAN: {
        double r = y - m;
        *dm = M->Etau * w * r;
        *dv = -0.5 * M->Etau * w;
        return 0.5 * (M->Elogtau - M->Etau * w * (r * r + v));
    }
    case VB_POISSON: {
        double lam = exp(m + 0.5 * v);
        *dm = w * (y - lam);
        *dv = -0.5 * w * lam;
        return w * (y * m - lam);
    }
    default: { /* binomial: y successes out of w trials */
        double sp = 0, s1 = 0, s2 = 0, sd = sqrt(2.0 * v);
        for (int k = 0; k < M->ngh; k++) {
            double e = m + sd * M->ghx[k], s = 1.0 / (1.0 + exp(-e));
            sp += M->ghw[k] * softplus(e);
            s1 += M->ghw[k] * s;
            s2 += M->ghw[k] * s * (1.0 - s);
        }
        *dm = y - w * s1;
        *dv = -0.5 * w * s2;
        return y * m - w * sp;
    }
    }
}

/* g_j = E log p(beta_j) under beta_j ~ N(mu, s2); dg/dmu, dg/ds2. */
double vb_glm_prior(const vb_glm *M, int j, double mu, double s2, double *dmu, double *ds2) {
    double loc = M->ploc[j], b = M->pscale[j], d = mu - loc;
    if (M->ptype[j] == VB_PRIOR_NORMAL) {
        *dmu = -d / (b * b);
        *ds2 = -0.5 / (b * b);
        return -0.5 * (LOG2PI + 2.0 * log(b)) - 0.5 * (d * d + s2) / (b * b);
    }
    /* laplace: E|beta - loc| is the folded-normal mean */
    double s = sqrt(s2), z = d / s, phi = dnorm(z, 0, 1, 0),
           Phi2 = 2.0 * pnorm(z, 0, 1, 1, 0) - 1.0;
    *dmu = -Phi2 / b;
    *ds2 = -phi / (s * b);
    return -log(2.0 * b) - (s * M_SQRT2 / M_SQRT_PI * exp(-0.5 * z * z) + d * Phi2) / b;
}

/* ------------------------------------------------------------ log joint -- */

/*
 * log p(y, theta) for theta = beta (p values) or, for gaussian, (beta, log tau)
 * with the Jacobian of log tau included.  M->eta must hold n doubles.
 */
double vb_glm_log_joint(const double *theta, double *grad, void *model) {
    vb_glm *M = (vb_glm *)model;
    int n = M->n, p = M->p, one = 1;
    double done = 1.0, dzero = 0.0, lp = 0.0;
    double *eta = M->eta;
    lp = M->llconst;
    for (int t = 0; t < n; t++)
        eta[t] = M->off[t];
    if (p > 0) F77_CALL(dgemv)("N", &n, &p, &done, M->X, &n, theta, &one, &done, eta, &one FCONE);
    double tau = M->family == VB_GAUSSIAN ? exp(theta[p]) : 0, dltau = 0;
    /* eta is overwritten by d log p / d eta */
    for (int t = 0; t < n; t++) {
        double y = M->y[t], w = M->wt[t], e = eta[t];
        if (w == 0) {
            eta[t] = 0;
            continue;
        }
        switch (M->family) {
        case VB_GAUSSIAN: {
            double r = y - e;
            lp += 0.5 * (theta[p] - tau * w * r * r);
            dltau += 0.5 * (1.0 - tau * w * r * r);
            eta[t] = tau * w * r;
            break;
        }
        case VB_POISSON: {
            double lam = exp(e);
            lp += w * (y * e - lam);
            eta[t] = w * (y - lam);
            break;
        }
        default:
            lp += y * e - w * softplus(e);
            eta[t] = y - w / (1.0 + exp(-e));
        }
    }
    if (grad && p > 0)
        F77_CALL(dgemv)("T", &n, &p, &done, M->X, &n, eta, &one, &dzero, grad, &one FCONE);
    for (int j = 0; j < p; j++) {
        double d = theta[j] - M->ploc[j], b = M->pscale[j];
        if (M->ptype[j] == VB_PRIOR_NORMAL) {
            lp += -0.5 * (LOG2PI + 2.0 * log(b)) - 0.5 * d * d / (b * b);
            if (grad) grad[j] -= d / (b * b);
        } else {
            lp += -log(2.0 * b) - fabs(d) / b;
            if (grad) grad[j] -= ((d > 0) - (d < 0)) / b;
        }
    }
    if (M->family == VB_GAUSSIAN) {
        /* Gamma(a0, b0) on tau, plus log|d tau / d log tau| = log tau */
        lp += M->a0 * log(M->b0) - lgammafn(M->a0) + M->a0 * theta[p] - M->b0 * tau;
        if (grad) grad[p] = dltau + M->a0 - M->b0 * tau;
    }
    return lp;
}

/* ---------------------------------------------------------- CAVI engine -- */

typedef struct {
    vb_glm *M;
    int nb, *bstart, *idx;  /* block b holds idx[bstart[b] .. bstart[b+1]-1] */
    double *mu, *Lam, *Sig; /* p, p x p (block entries used), p x p       */
    double *m, *v;          /* linear predictor mean (with offset), variance */
    double A, B;            /* q(tau) = Gamma(A, B) for gaussian           */
    double *Xb, *Z, *vold, *mt, *vt, *dm, *dv, *dmt, *dvt, *work; /* n or n x kmax */
    int grad_ok;      /* dm, dv hold the derivatives at the current (m, v) */
    const double *Xk; /* columns of the block being updated (Xb, or X itself) */
    double *Lb, *Rb, *Lcur, *Scur, *La, *Sa; /* kmax x kmax    */
    double *g, *delta, *mub, *mua;           /* kmax           */
} cavi_state;

static void set_tau(cavi_state *S) {
    S->M->Etau = S->A / S->B;
    S->M->Elogtau = digamma(S->A) - log(S->B);
}

/* sum_t f_t(m_t, v_t); derivatives into dm, dv unless they are NULL */
static double sum_obs(cavi_state *S, const double *m, const double *v, double *dm, double *dv) {
    double F = 0, a, b;
    for (int t = 0; t < S->M->n; t++)
        F += vb_glm_obs(S->M, t, m[t], v[t], dm ? dm + t : &a, dv ? dv + t : &b);
    return F;
}

/* E log p(tau) + entropy of q(tau): the tau part of the ELBO (= -KL(q(tau)||p(tau))) */
static double tau_terms(const cavi_state *S) {
    const vb_glm *M = S->M;
    double A = S->A, B = S->B;
    double Elp = M->a0 * log(M->b0) - lgammafn(M->a0) + (M->a0 - 1) * M->Elogtau - M->b0 * M->Etau;
    double H = A - log(B) + lgammafn(A) + (1 - A) * digamma(A);
    return Elp + H;
}

/* Prior expectation and entropy of block b at (mu_b, Sigma_b); Sb is k x k. */
static double block_prior_entropy(cavi_state *S, int b, const double *mub, const double *Sb,
                                  double logdetLam) {
    int k = S->bstart[b + 1] - S->bstart[b];
    double G = 0, a, c;
    for (int i = 0; i < k; i++)
        G += vb_glm_prior(S->M, S->idx[S->bstart[b] + i], mub[i], Sb[i + i * k], &a, &c);
    return G - 0.5 * logdetLam;
}

/* v_t contribution of a block: || R^{-T} x_tb ||^2 with Lambda_b = R'R. */
static void block_var(int n, int k, const double *Xb, const double *R, double *Z, double *out) {
    if (k == 1) {
        double s2 = 1.0 / (R[0] * R[0]);
        for (int t = 0; t < n; t++)
            out[t] = Xb[t] * Xb[t] * s2;
        return;
    }
    double one = 1.0;
    memcpy(Z, Xb, sizeof(double) * (size_t)n * k);
    F77_CALL(dtrsm)("R", "U", "N", "N", &n, &k, &one, R, &k, Z, &n FCONE FCONE FCONE FCONE);
    for (int t = 0; t < n; t++)
        out[t] = 0;
    for (int j = 0; j < k; j++)
        for (int t = 0; t < n; t++)
            out[t] += Z[t + (size_t)j * n] * Z[t + (size_t)j * n];
}

static void gather_block(cavi_state *S, int b, double *dst, const double *full) {
    int k = S->bstart[b + 1] - S->bstart[b], p = S->M->p;
    const int *ix = S->idx + S->bstart[b];
    for (int j = 0; j < k; j++)
        for (int i = 0; i < k; i++)
            dst[i + j * k] = full[ix[i] + (size_t)ix[j] * p];
}

/*
 * Target precision of block b at the current (m, v): X_b' diag(-2 dv) X_b +
 * diag(-2 dg/ds2); gradient g.  With `at_prior_var`, prior curvature is taken at
 * s2 = scale^2 (initialisation, when Sigma does not exist yet).
 */
static void block_target(cavi_state *S, int b, int at_prior_var) {
    vb_glm *M = S->M;
    int n = M->n, k = S->bstart[b + 1] - S->bstart[b], p = M->p, one = 1;
    const int *ix = S->idx + S->bstart[b];
    double done = 1.0, dzero = 0.0, a, c;
    for (int j = 0; j < k; j++)
        if (S->nb > 1) memcpy(S->Xb + (size_t)j * n, M->X + (size_t)ix[j] * n, sizeof(double) * n);
    /* a single block holds every column in order: use X itself, uncopied */
    S->Xk = S->nb > 1 ? S->Xb : M->X;
    for (int t = 0; t < n; t++)
        S->work[t] = -2.0 * S->dv[t];
    vb_xtwx(n, k, S->Xk, n, S->work, S->Z, S->Lb);
    F77_CALL(dgemv)("T", &n, &k, &done, S->Xk, &n, S->dm, &one, &dzero, S->g, &one FCONE);
    for (int i = 0; i < k; i++) {
        int j = ix[i];
        double s2 = at_prior_var ? M->pscale[j] * M->pscale[j] : S->Sig[j + (size_t)j * p];
        vb_glm_prior(M, j, S->mu[j], s2, &a, &c);
        S->g[i] += a;
        S->Lb[i + i * k] += -2.0 * c;
    }
}

/* Writes an accepted block state (mub, Lambda_a in Lb, its factor Rb) into S. */
static void block_store(cavi_state *S, int b, const double *mub, const double *Lb, double *Rb) {
    int k = S->bstart[b + 1] - S->bstart[b], p = S->M->p;
    const int *ix = S->idx + S->bstart[b];
    vb_chol_inv(k, Rb, k); /* Rb now holds Sigma_b */
    for (int j = 0; j < k; j++) {
        S->mu[ix[j]] = mub[j];
        for (int i = 0; i < k; i++) {
            S->Lam[ix[i] + (size_t)ix[j] * p] = Lb[i + j * k];
            S->Sig[ix[i] + (size_t)ix[j] * p] = Rb[i + j * k];
        }
    }
}

/*
 * One damped fixed-point Newton step on block b.  Returns the ELBO gain
 * (>= 0); *F holds sum_t f_t at the current state and is kept current.
 */
static double block_step(cavi_state *S, int b, double *F) {
    vb_glm *M = S->M;
    int n = M->n, k = S->bstart[b + 1] - S->bstart[b], kk = k * k, one = 1;
    const int *ix = S->idx + S->bstart[b];
    double done = 1.0, dzero = 0.0;

    if (!S->grad_ok) sum_obs(S, S->m, S->v, S->dm, S->dv);
    S->grad_ok = 1;
    block_target(S, b, 0);
    double *Lcur = S->Lcur, *Scur = S->Scur, *La = S->La, *Sa = S->Sa, *mub = S->mub, *mua = S->mua;
    gather_block(S, b, Lcur, S->Lam);
    gather_block(S, b, Scur, S->Sig);
    for (int i = 0; i < k; i++)
        mub[i] = S->mu[ix[i]];
    memcpy(S->Rb, Lcur, sizeof(double) * kk);
    if (vb_chol(k, S->Rb, k) != 0) return 0;
    double old = *F + block_prior_entropy(S, b, mub, Scur, vb_chol_logdet(k, S->Rb, k));
    if (S->nb == 1)
        memcpy(S->vold, S->v, sizeof(double) * n);
    else
        block_var(n, k, S->Xk, S->Rb, S->Z, S->vold);

    /* accept within rounding of the old value so converged blocks do not halve forever */
    double slack = 1e-13 * fabs(old);
    for (double a = 1.0; a > 1e-7; a *= 0.5) {
        for (int i = 0; i < kk; i++)
            La[i] = (1 - a) * Lcur[i] + a * S->Lb[i];
        memcpy(S->Rb, La, sizeof(double) * kk);
        if (vb_chol(k, S->Rb, k) != 0) continue;
        for (int i = 0; i < k; i++)
            S->delta[i] = a * S->g[i];
        vb_chol_solve(k, S->Rb, k, S->delta);
        for (int i = 0; i < k; i++)
            mua[i] = mub[i] + S->delta[i];
        memcpy(Sa, S->Rb, sizeof(double) * kk);
        if (vb_chol_inv(k, Sa, k) != 0) continue;
        F77_CALL(dgemv)("N", &n, &k, &done, S->Xk, &n, S->delta, &one, &dzero, S->mt, &one FCONE);
        block_var(n, k, S->Xk, S->Rb, S->Z, S->vt);
        for (int t = 0; t < n; t++) {
            S->mt[t] += S->m[t];
            S->vt[t] = S->v[t] - S->vold[t] + S->vt[t];
            if (S->vt[t] < 0) S->vt[t] = 0;
        }
        /* derivatives at the trial point come for free; kept if it is accepted */
        double Fa = sum_obs(S, S->mt, S->vt, S->dmt, S->dvt);
        double val = Fa + block_prior_entropy(S, b, mua, Sa, vb_chol_logdet(k, S->Rb, k));
        if (R_FINITE(val) && val >= old - slack) {
            block_store(S, b, mua, La, S->Rb);
            double *tmp;
            tmp = S->m, S->m = S->mt, S->mt = tmp;
            tmp = S->v, S->v = S->vt, S->vt = tmp;
            tmp = S->dm, S->dm = S->dmt, S->dmt = tmp;
            tmp = S->dv, S->dv = S->dvt, S->dvt = tmp;
            *F = Fa;
            return val - old;
        }
    }
    return 0;
}

/*
 * Joint Newton step on all the means with Sigma held fixed, for factorised q
 * (meanfield, block).  Coordinate ascent alone converges slowly when the
 * posterior is strongly correlated across blocks; this step moves every mean
 * at once along H^{-1} g with H = X' diag(-2 df/dv) X + diag(-2 dg/ds2), the
 * negative Hessian of the ELBO in mu (Price's identity), halving until the
 * ELBO does not decrease.  X'WX is accumulated over row chunks, so the extra
 * memory is O(p^2 + chunk p).  Cost n p^2 + p^3/3.
 */
#define JOINT_CHUNK 512
static void joint_mean_step(cavi_state *S, double *F, double *H, double *g, double *delta,
                            double *work) {
    vb_glm *M = S->M;
    int n = M->n, p = M->p, one = 1;
    double done = 1.0, dzero = 0.0, a, c;
    if (!S->grad_ok) sum_obs(S, S->m, S->v, S->dm, S->dv);
    S->grad_ok = 1;
    memset(H, 0, sizeof(double) * (size_t)p * p);
    for (int t0 = 0; t0 < n; t0 += JOINT_CHUNK) {
        int nc = n - t0 < JOINT_CHUNK ? n - t0 : JOINT_CHUNK;
        for (int j = 0; j < p; j++)
            for (int t = 0; t < nc; t++)
                work[t + (size_t)j * nc] =
                    sqrt(-2.0 * S->dv[t0 + t]) * M->X[t0 + t + (size_t)j * n];
        F77_CALL(dsyrk)("U", "T", &p, &nc, &done, work, &nc, &done, H, &p FCONE FCONE);
    }
    F77_CALL(dgemv)("T", &n, &p, &done, M->X, &n, S->dm, &one, &dzero, g, &one FCONE);
    double G = 0;
    for (int j = 0; j < p; j++) {
        G += vb_glm_prior(M, j, S->mu[j], S->Sig[j + (size_t)j * p], &a, &c);
        g[j] += a;
        H[j + (size_t)j * p] += -2.0 * c;
    }
    if (vb_chol(p, H, p) != 0) return;
    memcpy(delta, g, sizeof(double) * p);
    vb_chol_solve(p, H, p, delta);
    double old = *F + G, slack = 1e-13 * fabs(old);
    F77_CALL(dgemv)("N", &n, &p, &done, M->X, &n, delta, &one, &dzero, work, &one FCONE);
    for (double al = 1.0; al > 1e-7; al *= 0.5) {
        double Ga = 0;
        for (int t = 0; t < n; t++)
            S->mt[t] = S->m[t] + al * work[t];
        for (int j = 0; j < p; j++)
            Ga += vb_glm_prior(M, j, S->mu[j] + al * delta[j], S->Sig[j + (size_t)j * p], &a, &c);
        double Fa = sum_obs(S, S->mt, S->v, S->dmt, S->dvt);
        if (R_FINITE(Fa + Ga) && Fa + Ga >= old - slack) {
            for (int j = 0; j < p; j++)
                S->mu[j] += al * delta[j];
            double *tmp;
            tmp = S->m, S->m = S->mt, S->mt = tmp;
            tmp = S->dm, S->dm = S->dmt, S->dmt = tmp;
            tmp = S->dv, S->dv = S->dvt, S->dvt = tmp;
            *F = Fa;
            return;
        }
    }
}

/* Full ELBO and its parts at the current state. */
static double full_elbo(cavi_state *S, double *F, double *loglik, double *kl) {
    vb_glm *M = S->M;
    int p = M->p;
    double G = 0, ldet = 0, a, c;
    *F = sum_obs(S, S->m, S->v, NULL, NULL);
    *loglik = *F + M->llconst;
    for (int j = 0; j < p; j++)
        G += vb_glm_prior(M, j, S->mu[j], S->Sig[j + (size_t)j * p], &a, &c);
    for (int b = 0; b < S->nb; b++) {
        int k = S->bstart[b + 1] - S->bstart[b];
        gather_block(S, b, S->Rb, S->Lam);
        vb_chol(k, S->Rb, k);
        ldet += vb_chol_logdet(k, S->Rb, k);
    }
    double negkl = G - 0.5 * ldet + 0.5 * p * (1 + LOG2PI);
    if (M->family == VB_GAUSSIAN) negkl += tau_terms(S);
    *kl = -negkl;
    return *loglik + negkl;
}

static void gaussian_tau_update(cavi_state *S) {
    vb_glm *M = S->M;
    double ss = 0, neff = 0;
    for (int t = 0; t < M->n; t++) {
        if (M->wt[t] == 0) continue;
        double r = M->y[t] - S->m[t];
        ss += M->wt[t] * (r * r + S->v[t]);
        neff += 1;
    }
    S->A = M->a0 + 0.5 * neff;
    S->B = M->b0 + 0.5 * ss;
    set_tau(S);
    S->grad_ok = 0;
}

/* The result list shared by the GLM engines (unprotected on return). */
static SEXP glm_result(int n, int p, const double *mu, const double *Sigma, double elbo,
                       const double *trace, int it, double ll, double kl, int converged,
                       const double *tau, const double *m, const double *v) {
    const char *nms[] = {"mu",         "Sigma",     "elbo", "trace",    "loglik",  "kl",
                         "iterations", "converged", "tau",  "eta_mean", "eta_var", ""};
    SEXP out = PROTECT(Rf_mkNamed(VECSXP, nms));
    SET_VECTOR_ELT(out, 0, Rf_allocVector(REALSXP, p));
    memcpy(REAL(VECTOR_ELT(out, 0)), mu, sizeof(double) * p);
    SET_VECTOR_ELT(out, 1, Rf_allocMatrix(REALSXP, p, p));
    memcpy(REAL(VECTOR_ELT(out, 1)), Sigma, sizeof(double) * (size_t)p * p);
    SET_VECTOR_ELT(out, 2, Rf_ScalarReal(elbo));
    SET_VECTOR_ELT(out, 3, Rf_allocVector(REALSXP, it + 1));
    memcpy(REAL(VECTOR_ELT(out, 3)), trace, sizeof(double) * (it + 1));
    SET_VECTOR_ELT(out, 4, Rf_ScalarReal(ll));
    SET_VECTOR_ELT(out, 5, Rf_ScalarReal(kl));
    SET_VECTOR_ELT(out, 6, Rf_ScalarInteger(it));
    SET_VECTOR_ELT(out, 7, Rf_ScalarLogical(converged));
    if (tau) {
        SET_VECTOR_ELT(out, 8, Rf_allocVector(REALSXP, 2));
        memcpy(REAL(VECTOR_ELT(out, 8)), tau, sizeof(double) * 2);
    }
    SET_VECTOR_ELT(out, 9, Rf_allocVector(REALSXP, n));
    memcpy(REAL(VECTOR_ELT(out, 9)), m, sizeof(double) * n);
    SET_VECTOR_ELT(out, 10, Rf_allocVector(REALSXP, n));
    memcpy(REAL(VECTOR_ELT(out, 10)), v, sizeof(double) * n);
    UNPROTECT(1);
    return out;
}

SEXP C_glm_cavi(SEXP model, SEXP init, SEXP blocks, SEXP control) {
    vb_glm M;
    vb_glm_unpack(model, &M);
    int n = M.n, p = M.p, nprot = 0;
    if (!Rf_isReal(init) || Rf_length(init) != p + 2)
        Rf_error(
            "'init' must be a double vector of length p + 2 (coefficients, tau shape, tau rate)");
    if (!Rf_isInteger(blocks) || Rf_length(blocks) != p)
        Rf_error("'blocks' must be an integer vector with one block id per coefficient");
    if (!Rf_isReal(control) || Rf_length(control) != 4)
        Rf_error("'control' must be c(maxit, tol, quiet, joint_means) as doubles");
    int maxit = (int)REAL(control)[0], quiet = REAL(control)[2] != 0;
    double tol = REAL(control)[1], joint_max = REAL(control)[3];
    if (maxit < 1 || !(tol > 0)) Rf_error("'maxit' must be >= 1 and 'tol' positive");
    for (int j = 0; j < p + 2; j++)
        if (!R_FINITE(REAL(init)[j])) Rf_error("'init' must be finite");

    /* blocks: ids 0..nb-1, every id used */
    int nb = 0;
    for (int j = 0; j < p; j++) {
        int b = INTEGER(blocks)[j];
        if (b == NA_INTEGER || b < 0 || b >= p) Rf_error("block ids must lie in 0..p-1");
        if (b + 1 > nb) nb = b + 1;
    }
    cavi_state S;
    S.M = &M;
    S.nb = nb;
    S.bstart = (int *)R_alloc(nb + 1, sizeof(int));
    S.idx = (int *)R_alloc(p > 0 ? p : 1, sizeof(int));
    int kmax = 0;
    for (int b = 0, pos = 0; b < nb; b++) {
        S.bstart[b] = pos;
        for (int j = 0; j < p; j++)
            if (INTEGER(blocks)[j] == b) S.idx[pos++] = j;
        if (pos == S.bstart[b]) Rf_error("block id %d is not used: ids must be 0..nb-1", b);
        if (pos - S.bstart[b] > kmax) kmax = pos - S.bstart[b];
        S.bstart[b + 1] = pos;
    }
    size_t pp = (size_t)p * p;
    S.mu = (double *)R_alloc(p + 1, sizeof(double));
    S.Lam = (double *)R_alloc(pp + 1, sizeof(double));
    S.Sig = (double *)R_alloc(pp + 1, sizeof(double));
    S.m = (double *)R_alloc(n, sizeof(double));
    S.v = (double *)R_alloc(n, sizeof(double));
    S.Xb = (double *)R_alloc((size_t)n * kmax + 1, sizeof(double));
    S.Z = (double *)R_alloc((size_t)n * kmax + 1, sizeof(double));
    S.vold = (double *)R_alloc(n, sizeof(double));
    S.mt = (double *)R_alloc(n, sizeof(double));
    S.vt = (double *)R_alloc(n, sizeof(double));
    S.dm = (double *)R_alloc(n, sizeof(double));
    S.dv = (double *)R_alloc(n, sizeof(double));
    S.dmt = (double *)R_alloc(n, sizeof(double));
    S.dvt = (double *)R_alloc(n, sizeof(double));
    S.grad_ok = 0;
    /* joint mean steps for factorised q with at most joint_max coefficients */
    int joint = nb > 1 && p <= joint_max;
    double *jH = NULL, *jg = NULL, *jd = NULL, *jw = NULL;
    if (joint) {
        jH = (double *)R_alloc(pp, sizeof(double));
        jg = (double *)R_alloc(p, sizeof(double));
        jd = (double *)R_alloc(p, sizeof(double));
        size_t nw = (size_t)JOINT_CHUNK * p > (size_t)n ? (size_t)JOINT_CHUNK * p : (size_t)n;
        jw = (double *)R_alloc(nw, sizeof(double));
    }
    S.work = (double *)R_alloc(n, sizeof(double));
    double **kk_bufs[] = {&S.Lb, &S.Rb, &S.Lcur, &S.Scur, &S.La, &S.Sa};
    for (int i = 0; i < 6; i++)
        *kk_bufs[i] = (double *)R_alloc((size_t)kmax * kmax + 1, sizeof(double));
    double **k_bufs[] = {&S.g, &S.delta, &S.mub, &S.mua};
    for (int i = 0; i < 4; i++)
        *k_bufs[i] = (double *)R_alloc(kmax + 1, sizeof(double));
    memset(S.Lam, 0, sizeof(double) * pp);
    memset(S.Sig, 0, sizeof(double) * pp);
    memcpy(S.mu, REAL(init), sizeof(double) * p);
    S.A = REAL(init)[p];
    S.B = REAL(init)[p + 1];
    if (!(S.A > 0 && S.B > 0)) Rf_error("initial q(tau) needs positive shape and rate");
    set_tau(&S);

    /* start: Sigma_b = inverse curvature at mu_init with v = 0 */
    int one = 1;
    double done = 1.0;
    for (int t = 0; t < n; t++) {
        S.m[t] = M.off[t];
        S.v[t] = 0;
    }
    if (p > 0) F77_CALL(dgemv)("N", &n, &p, &done, M.X, &n, S.mu, &one, &done, S.m, &one FCONE);
    sum_obs(&S, S.m, S.v, S.dm, S.dv);
    for (int b = 0; b < nb; b++) {
        int k = S.bstart[b + 1] - S.bstart[b];
        block_target(&S, b, 1);
        memcpy(S.Rb, S.Lb, sizeof(double) * k * k);
        int info = vb_chol(k, S.Rb, k);
        if (info != 0) vb_linalg_error(info, "initial posterior precision");
        for (int i = 0; i < k; i++)
            S.mub[i] = S.mu[S.idx[S.bstart[b] + i]];
        block_store(&S, b, S.mub, S.Lb, S.Rb);
    }
    for (int b = 0; b < nb; b++) {
        int k = S.bstart[b + 1] - S.bstart[b];
        const int *ix = S.idx + S.bstart[b];
        for (int j = 0; j < k; j++)
            memcpy(S.Xb + (size_t)j * n, M.X + (size_t)ix[j] * n, sizeof(double) * n);
        gather_block(&S, b, S.Rb, S.Lam);
        vb_chol(k, S.Rb, k);
        block_var(n, k, S.Xb, S.Rb, S.Z, S.vt);
        for (int t = 0; t < n; t++)
            S.v[t] += S.vt[t];
    }
    if (M.family == VB_GAUSSIAN) gaussian_tau_update(&S);

    SEXP trace = PROTECT(Rf_allocVector(REALSXP, maxit + 1));
    nprot++;
    double F, ll, kl, elbo = full_elbo(&S, &F, &ll, &kl);
    REAL(trace)[0] = elbo;
    int it = 0, converged = 0;
    clock_t t0 = clock(), tlast = t0;
    while (it < maxit) {
        it++;
        if (joint) joint_mean_step(&S, &F, jH, jg, jd, jw);
        for (int b = 0; b < nb; b++)
            block_step(&S, b, &F);
        if (M.family == VB_GAUSSIAN) gaussian_tau_update(&S);
        double prev = elbo;
        elbo = full_elbo(&S, &F, &ll, &kl);
        REAL(trace)[it] = elbo;
        if (!quiet && (double)(clock() - tlast) / CLOCKS_PER_SEC > 1.0) {
            tlast = clock();
            Rprintf("vb: iteration %d, ELBO %.6f\n", it, elbo);
        }
        if (fabs(elbo - prev) <= tol * (fabs(elbo) + tol)) {
            converged = 1;
            break;
        }
        R_CheckUserInterrupt();
    }

    double tau[2] = {S.A, S.B};
    SEXP out = glm_result(n, p, S.mu, S.Sig, elbo, REAL(trace), it, ll, kl, converged,
                          M.family == VB_GAUSSIAN ? tau : NULL, S.m, S.v);
    UNPROTECT(nprot);
    return out;
}

/* ------------------------------------------- ELBO at a given q (tests) -- */

/*
 * Closed-form ELBO at q(beta) = N(mu, Sigma) (dense) [and q(tau) = Gamma(tau)],
 * with its gradient in mu and in Sigma.  Used by tests and diagnostics.
 */
SEXP C_glm_elbo(SEXP model, SEXP mu, SEXP Sigma, SEXP tau) {
    vb_glm M;
    vb_glm_unpack(model, &M);
    int n = M.n, p = M.p, one = 1, nprot = 0;
    if (!Rf_isReal(mu) || Rf_length(mu) != p) Rf_error("'mu' must be a double vector of length p");
    if (!Rf_isReal(Sigma) || !Rf_isMatrix(Sigma) || Rf_nrows(Sigma) != p || Rf_ncols(Sigma) != p)
        Rf_error("'Sigma' must be a p x p double matrix");
    if (!Rf_isReal(tau) || Rf_length(tau) != 2 || !(REAL(tau)[0] > 0) || !(REAL(tau)[1] > 0))
        Rf_error("'tau' must be c(shape, rate) with positive entries");
    cavi_state S;
    S.M = &M;
    S.A = REAL(tau)[0];
    S.B = REAL(tau)[1];
    set_tau(&S);
    S.dm = (double *)R_alloc(n, sizeof(double));
    S.dv = (double *)R_alloc(n, sizeof(double));
    double *m = (double *)R_alloc(n, sizeof(double)), *v = (double *)R_alloc(n, sizeof(double));
    double *Z = (double *)R_alloc((size_t)n * p + 1, sizeof(double));
    double *R = (double *)R_alloc((size_t)p * p + 1, sizeof(double));
    double done = 1.0, dzero = 0.0;
    for (int t = 0; t < n; t++)
        m[t] = M.off[t];
    if (p > 0) F77_CALL(dgemv)("N", &n, &p, &done, M.X, &n, REAL(mu), &one, &done, m, &one FCONE);
    memcpy(R, REAL(Sigma), sizeof(double) * p * p);
    int info = vb_chol(p, R, p);
    if (info != 0) vb_linalg_error(info, "Sigma");
    /* v_t = || R x_t ||^2 where Sigma = R'R: Z = X R' */
    memcpy(Z, M.X, sizeof(double) * (size_t)n * p);
    if (p > 0)
        F77_CALL(dtrmm)("R", "U", "T", "N", &n, &p, &done, R, &p, Z, &n FCONE FCONE FCONE FCONE);
    for (int t = 0; t < n; t++) {
        v[t] = 0;
        for (int j = 0; j < p; j++)
            v[t] += Z[t + (size_t)j * n] * Z[t + (size_t)j * n];
    }
    double F = sum_obs(&S, m, v, S.dm, S.dv), G = 0, a, c;
    const char *nms[] = {"elbo", "loglik", "kl", "grad_mu", "grad_Sigma", ""};
    SEXP out = PROTECT(Rf_mkNamed(VECSXP, nms));
    nprot++;
    SEXP gm = Rf_allocVector(REALSXP, p);
    SET_VECTOR_ELT(out, 3, gm);
    SEXP gS = Rf_allocMatrix(REALSXP, p, p);
    SET_VECTOR_ELT(out, 4, gS);
    if (p > 0) {
        F77_CALL(dgemv)("T", &n, &p, &done, M.X, &n, S.dm, &one, &dzero, REAL(gm), &one FCONE);
        /* d/dSigma = X' diag(dv) X + diag(dg/ds2) + 1/2 Sigma^{-1}; dv <= 0 */
        for (int t = 0; t < n; t++)
            S.dv[t] = -S.dv[t];
        vb_xtwx(n, p, M.X, n, S.dv, Z, REAL(gS));
        for (size_t i = 0; i < (size_t)p * p; i++)
            REAL(gS)[i] = -REAL(gS)[i];
    }
    for (int j = 0; j < p; j++) {
        G += vb_glm_prior(&M, j, REAL(mu)[j], REAL(Sigma)[j + (size_t)j * p], &a, &c);
        REAL(gm)[j] += a;
        REAL(gS)[j + (size_t)j * p] += c;
    }
    double ldet = vb_chol_logdet(p, R, p);
    vb_chol_inv(p, R, p);
    for (size_t i = 0; i < (size_t)p * p; i++)
        REAL(gS)[i] += 0.5 * R[i];
    double negkl = G + 0.5 * ldet + 0.5 * p * (1 + LOG2PI);
    if (M.family == VB_GAUSSIAN) negkl += tau_terms(&S);
    F += M.llconst;
    SET_VECTOR_ELT(out, 0, Rf_ScalarReal(F + negkl));
    SET_VECTOR_ELT(out, 1, Rf_ScalarReal(F));
    SET_VECTOR_ELT(out, 2, Rf_ScalarReal(-negkl));
    UNPROTECT(nprot);
    return out;
}

/* log p(y, theta) and its gradient for each column of theta (d x S). */
SEXP C_glm_log_joint(SEXP model, SEXP theta) {
    vb_glm M;
    vb_glm_unpack(model, &M);
    int d = M.p + (M.family == VB_GAUSSIAN);
    if (!Rf_isReal(theta) || !Rf_isMatrix(theta) || Rf_nrows(theta) != d)
        Rf_error("'theta' must be a double matrix with %d rows (one column per draw)", d);
    int ns = Rf_ncols(theta);
    M.eta = (double *)R_alloc(M.n + 1, sizeof(double));
    const char *nms[] = {"value", "gradient", ""};
    SEXP out = PROTECT(Rf_mkNamed(VECSXP, nms));
    SEXP val = Rf_allocVector(REALSXP, ns);
    SET_VECTOR_ELT(out, 0, val);
    SEXP gr = Rf_allocMatrix(REALSXP, d, ns);
    SET_VECTOR_ELT(out, 1, gr);
    for (int s = 0; s < ns; s++) {
        REAL(val)[s] = vb_glm_log_joint(REAL(theta) + (size_t)s * d, REAL(gr) + (size_t)s * d, &M);
        if (s % 64 == 63) R_CheckUserInterrupt();
    }
    UNPROTECT(1);
    return out;
}

/* ------------------------------------------------ Jaakkola-Jordan bound -- */

/*
 * Logistic regression by the Jaakkola-Jordan bound (equivalently mean-field
 * CAVI on the Polya-Gamma augmented model), normal priors, dense q:
 *   Sigma^-1 = S0^-1 + 2 X' diag(n lambda(xi)) X,
 *   mu = Sigma (S0^-1 m0 + X'(y - n/2 - 2 n lambda(xi) o)),   xi_t^2 = E eta_t^2,
 * with lambda(xi) = tanh(xi/2)/(4 xi).  Each step is an exact coordinate
 * ascent step on the bound, so its trace is monotone.  Cost 2np^2 + p^3/3.
 */
static double jj_lambda(double xi) {
    return xi < 1e-4 ? 0.125 - xi * xi / 96.0 : tanh(0.5 * xi) / (4.0 * xi);
}

static double log_sigmoid(double x) {
    return -softplus(-x);
}

SEXP C_glm_jj(SEXP model, SEXP control) {
    vb_glm M;
    vb_glm_unpack(model, &M);
    int n = M.n, p = M.p, one = 1, nprot = 0;
    if (M.family != VB_BINOMIAL) Rf_error("the Jaakkola-Jordan bound is for binomial models");
    for (int j = 0; j < p; j++)
        if (M.ptype[j] != VB_PRIOR_NORMAL)
            Rf_error("the Jaakkola-Jordan bound needs normal priors");
    if (!Rf_isReal(control) || Rf_length(control) != 4)
        Rf_error("'control' must be c(maxit, tol, quiet, 0)");
    int maxit = (int)REAL(control)[0];
    double tol = REAL(control)[1], done = 1.0, dzero = 0.0;
    if (maxit < 1 || !(tol > 0)) Rf_error("'maxit' must be >= 1 and 'tol' positive");
    double *xi2 = (double *)R_alloc(n, sizeof(double)), *w = (double *)R_alloc(n, sizeof(double));
    double *r = (double *)R_alloc(n, sizeof(double)), *m = (double *)R_alloc(n, sizeof(double));
    double *v = (double *)R_alloc(n, sizeof(double)),
           *work = (double *)R_alloc((size_t)n * p + 1, sizeof(double));
    double *Lam = (double *)R_alloc((size_t)p * p + 1, sizeof(double)),
           *mu = (double *)R_alloc(p + 1, sizeof(double));
    SEXP trace = PROTECT(Rf_allocVector(REALSXP, maxit + 1));
    nprot++;
    for (int t = 0; t < n; t++)
        xi2[t] = 0;
    double elbo = R_NegInf, ll = 0, kl = 0, ldet = 0;
    int it = 0, converged = 0;
    for (it = 0; it <= maxit; it++) {
        /* q(beta) given xi */
        for (int t = 0; t < n; t++) {
            double lam = jj_lambda(sqrt(xi2[t]));
            w[t] = 2.0 * M.wt[t] * lam;
            r[t] = M.y[t] - 0.5 * M.wt[t] - w[t] * M.off[t];
        }
        vb_xtwx(n, p, M.X, n, w, work, Lam);
        if (p > 0) F77_CALL(dgemv)("T", &n, &p, &done, M.X, &n, r, &one, &dzero, mu, &one FCONE);
        for (int j = 0; j < p; j++) {
            double s2 = M.pscale[j] * M.pscale[j];
            Lam[j + (size_t)j * p] += 1.0 / s2;
            mu[j] += M.ploc[j] / s2;
        }
        int info = vb_chol(p, Lam, p);
        if (info != 0) vb_linalg_error(info, "posterior precision");
        vb_chol_solve(p, Lam, p, mu);
        ldet = -vb_chol_logdet(p, Lam, p); /* log|Sigma| */
        /* linear predictor moments: v_t = || R^{-T} x_t ||^2 */
        memcpy(work, M.X, sizeof(double) * (size_t)n * p);
        if (p > 0) F77_CALL(dtrsm)
        ("R", "U", "N", "N", &n, &p, &done, Lam, &p, work, &n FCONE FCONE FCONE FCONE);
        for (int t = 0; t < n; t++) {
            m[t] = M.off[t];
            v[t] = 0;
            for (int j = 0; j < p; j++)
                v[t] += work[t + (size_t)j * n] * work[t + (size_t)j * n];
        }
        if (p > 0) F77_CALL(dgemv)("N", &n, &p, &done, M.X, &n, mu, &one, &done, m, &one FCONE);
        /* the bound at (q, xi), then the xi update */
        ll = 0;
        for (int t = 0; t < n; t++) {
            double nt = M.wt[t], x = sqrt(xi2[t]), lam = jj_lambda(x);
            if (nt == 0) continue;
            ll += (M.y[t] - 0.5 * nt) * m[t] - nt * lam * (m[t] * m[t] + v[t]) +
                  nt * (lam * xi2[t] + log_sigmoid(x) - 0.5 * x);
        }
        ll += M.llconst;
        vb_chol_inv(p, Lam, p); /* Lam now holds Sigma */
        double G = 0, a, c;
        for (int j = 0; j < p; j++)
            G += vb_glm_prior(&M, j, mu[j], Lam[j + (size_t)j * p], &a, &c);
        kl = -(G + 0.5 * ldet + 0.5 * p * (1 + LOG2PI));
        double prev = elbo;
        elbo = ll - kl;
        REAL(trace)[it] = elbo;
        for (int t = 0; t < n; t++)
            xi2[t] = m[t] * m[t] + v[t];
        if (it > 0 && fabs(elbo - prev) <= tol * (fabs(elbo) + tol)) {
            converged = 1;
            break;
        }
        R_CheckUserInterrupt();
    }
    if (it > maxit) it = maxit;
    SEXP out = glm_result(n, p, mu, Lam, elbo, REAL(trace), it, ll, kl, converged, NULL, m, v);
    UNPROTECT(nprot);
    return out;
}
