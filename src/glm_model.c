/*
 * glm_model.c — the Bayesian GLM every GLM engine works on.
 *
 * Model: eta = X beta + offset; y | eta from the family (gaussian with noise
 * precision tau ~ Gamma(a0, b0), poisson with log link, binomial with logit
 * link, y successes of `weights` trials); independent priors
 * beta_j ~ normal(loc, scale) or laplace(loc, scale).
 *
 * Under q(beta) = N(mu, Sigma) the likelihood enters only through
 * f_t(m_t, v_t) = E log p(y_t | eta_t), eta_t ~ N(m_t, v_t) (expect.c), and each
 * prior through g_j(mu_j, Sigma_jj) = E log p(beta_j), so
 *   ELBO = sum_t f_t + sum_j g_j + 1/2 log|Sigma| + p/2 (1 + log 2 pi) [+ tau terms].
 * Also here: log p(y, theta) (the log-joint contract, theta = beta or
 * (beta, log tau)), the ELBO at a given dense q, and the result list.
 *
 * Entry points: C_glm_log_joint(model, theta), C_glm_elbo(model, mu, Sigma, tau),
 * C_binomial_mean(m, v, control): E sigmoid(eta) for eta ~ N(m, v);
 * C_glm_response(y, w, off, fam), C_design_scan(X, w, cls) and
 * C_centre_design(X, centre): the checks, moments and centred copy of the data
 * that vb_fit() needs, without n x p temporaries; C_class_ranges(u, cls) for
 * the separation check.
 */
#include "vbayes.h"

/* A value whose square and inverse square are finite and non-zero. */
static int safe_scale(double b) {
    return R_FINITE(b) && b > 0 && R_FINITE(b * b) && b * b > 0 && R_FINITE(1.0 / (b * b));
}

/*
 * 1 when every x_i is finite: a probe s += x_i * 0, which stays 0 for finite
 * entries and turns NaN at the first NA, NaN or +-Inf, in four accumulators
 * (no branch per element, so the loop pipelines: ~0.3 ns per element against
 * ~1 ns for an R_FINITE test each), checked every 64 K entries to stop early.
 */
static int vb_all_finite(size_t n, const double *x) {
    size_t i = 0;
    while (i < n) {
        size_t e = n - i > 65536 ? i + 65536 : n;
        double z0 = 0, z1 = 0, z2 = 0, z3 = 0;
        for (; i + 4 <= e; i += 4) {
            z0 += x[i] * 0;
            z1 += x[i + 1] * 0;
            z2 += x[i + 2] * 0;
            z3 += x[i + 3] * 0;
        }
        for (; i < e; i++)
            z0 += x[i] * 0;
        if ((z0 + z1) + (z2 + z3) != 0) return 0;
    }
    return 1;
}

/* log(y!) = lgammafn(y + 1), from a table for the small whole y of counts. */
#define LFACT_TAB 256
static double lfact(double y) {
    static double tab[LFACT_TAB];
    static int filled = 0;
    if (!filled) {
        for (int k = 0; k < LFACT_TAB; k++)
            tab[k] = lgammafn(k + 1.0);
        filled = 1;
    }
    if (y >= 0 && y < LFACT_TAB && y == (int)y) return tab[(int)y];
    return lgammafn(y + 1.0);
}

/* Unpacks and checks the model list built by R's glm_model(). */
void vb_glm_unpack(SEXP model, vb_glm *M) {
    const char *w = "model";
    SEXP X = vb_elt_req(model, "X", w);
    if (TYPEOF(X) != REALSXP || !Rf_isMatrix(X)) Rf_error("'model$X' must be a double matrix");
    M->n = Rf_nrows(X);
    M->p = Rf_ncols(X);
    M->X = REAL(X);
    M->family = vb_int_elt(model, "family", VB_GAUSSIAN, VB_BINOMIAL, w);
    M->y = vb_real_elt(model, "y", M->n, w);
    M->off = vb_real_elt(model, "offset", M->n, w);
    M->wt = vb_real_elt(model, "weights", M->n, w);
    SEXP pt = vb_elt_req(model, "prior_type", w);
    if (TYPEOF(pt) != INTSXP || Rf_length(pt) != M->p)
        Rf_error("'model$prior_type' must be an integer vector of length p");
    M->ptype = INTEGER(pt);
    M->ploc = vb_real_elt(model, "prior_location", M->p, w);
    M->pscale = vb_real_elt(model, "prior_scale", M->p, w);
    for (int j = 0; j < M->p; j++) {
        if (M->ptype[j] != VB_PRIOR_NORMAL && M->ptype[j] != VB_PRIOR_LAPLACE)
            Rf_error("unknown prior code %d", M->ptype[j]);
        if (!safe_scale(M->pscale[j]) || !R_FINITE(M->ploc[j] * M->ploc[j]))
            Rf_error("prior scales must be positive with a finite square and inverse square, "
                     "locations finite with a finite square");
    }
    const double *tp = vb_real_elt(model, "tau_prior", 2, w);
    M->a0 = tp[0];
    M->b0 = tp[1];
    if (!safe_scale(M->a0) || !safe_scale(M->b0))
        Rf_error("the gamma prior on the precision needs finite positive shape and rate");
    SEXP ghx = vb_elt_req(model, "gh_x", w);
    M->ngh = Rf_length(ghx);
    M->ghx = vb_real_elt(model, "gh_x", -1, w);
    M->ghw = vb_real_elt(model, "gh_w", M->ngh, w);
    if (M->family == VB_BINOMIAL && M->ngh < 1) Rf_error("binomial needs a Gauss-Hermite rule");
    if (!vb_all_finite((size_t)M->n * M->p, M->X))
        Rf_error("the design matrix contains NA or infinite values");
    if (!vb_all_finite(M->n, M->y) || !vb_all_finite(M->n, M->off) || !vb_all_finite(M->n, M->wt))
        Rf_error("y, offset and weights must be finite (weights non-negative)");
    for (int t = 0; t < M->n; t++)
        if (M->wt[t] < 0) Rf_error("y, offset and weights must be finite (weights non-negative)");
    for (int t = 0; t < M->n; t++) {
        if (M->family == VB_POISSON && M->y[t] < 0) Rf_error("poisson counts must be non-negative");
        if (M->family == VB_BINOMIAL && (M->y[t] < 0 || M->y[t] > M->wt[t]))
            Rf_error("binomial successes must lie between 0 and the number of trials");
    }
    M->llconst = 0;
    if (M->family == VB_GAUSSIAN) { /* log(1) = 0: unit weights cost no log */
        double slw = 0;
        int npos = 0;
        for (int t = 0; t < M->n; t++) {
            double wt = M->wt[t];
            npos += wt > 0;
            if (wt > 0 && wt != 1) slw += log(wt);
        }
        M->llconst = 0.5 * (slw - npos * VB_LOG2PI);
    } else {
        for (int t = 0; t < M->n; t++) {
            double y = M->y[t], wt = M->wt[t];
            if (wt == 0) continue;
            if (M->family == VB_POISSON)
                M->llconst -= wt * lfact(y);
            else
                M->llconst += lfact(wt) - lfact(y) - lfact(wt - y);
        }
    }
    M->Etau = 1.0;
    M->Elogtau = 0.0;
    M->eta = NULL;
}

/* f_t = E log p(y_t | eta), eta ~ N(m, v), without the terms in M->llconst. */
double vb_glm_obs(const vb_glm *M, int t, double m, double v, double *dm, double *dv) {
    double y = M->y[t], w = M->wt[t];
    if (w == 0) {
        *dm = *dv = 0;
        return 0;
    }
    switch (M->family) {
    case VB_GAUSSIAN:
        return vb_egauss(y, w, M->Etau, M->Elogtau, m, v, dm, dv);
    case VB_POISSON:
        return vb_epois(y, w, m, v, dm, dv);
    default:
        return vb_ebinom(y, w, m, v, M->ngh, M->ghx, M->ghw, dm, dv);
    }
}

/* sum_t f_t over the n observations; derivatives into dm, dv unless NULL. */
double vb_glm_obs_sum(const vb_glm *M, const double *m, const double *v, double *dm, double *dv) {
    if (M->family == VB_BINOMIAL)
        return vb_ebinom_n(M->n, M->y, M->wt, m, v, M->ngh, M->ghx, M->ghw, dm, dv);
    double F = 0, a, b;
    for (int t = 0; t < M->n; t++)
        F += vb_glm_obs(M, t, m[t], v[t], dm ? dm + t : &a, dv ? dv + t : &b);
    return F;
}

/* g_j = E log p(beta_j) under beta_j ~ N(mu, s2); dg/dmu, dg/ds2. */
double vb_glm_prior(const vb_glm *M, int j, double mu, double s2, double *dmu, double *ds2) {
    double loc = M->ploc[j], b = M->pscale[j], d = mu - loc;
    if (M->ptype[j] == VB_PRIOR_NORMAL) {
        *dmu = -d / (b * b);
        *ds2 = -0.5 / (b * b);
        return -0.5 * (VB_LOG2PI + 2.0 * log(b)) - 0.5 * (d * d + s2) / (b * b);
    }
    /* laplace: E|beta - loc| is the folded-normal mean */
    double s = sqrt(s2), z = d / s, phi = dnorm(z, 0, 1, 0),
           Phi2 = 2.0 * pnorm(z, 0, 1, 1, 0) - 1.0;
    *dmu = -Phi2 / b;
    *ds2 = -phi / (s * b);
    return -log(2.0 * b) - (s * M_SQRT2 / M_SQRT_PI * exp(-0.5 * z * z) + d * Phi2) / b;
}

/* E log p(tau) + entropy of q(tau) = Gamma(A, B): the tau part of the ELBO. */
double vb_glm_tau_terms(const vb_glm *M, double A, double B) {
    double Elp = M->a0 * log(M->b0) - lgammafn(M->a0) + (M->a0 - 1) * M->Elogtau - M->b0 * M->Etau;
    double H = A - log(B) + lgammafn(A) + (1 - A) * digamma(A);
    return Elp + H;
}

/*
 * log p(y, theta) for theta = beta (p values) or, for gaussian, (beta, log tau)
 * with the Jacobian of log tau included.  M->eta must hold n doubles.
 */
double vb_glm_log_joint(const double *theta, double *grad, void *model) {
    vb_glm *M = (vb_glm *)model;
    int n = M->n, p = M->p, one = 1;
    double done = 1.0, dzero = 0.0, lp = M->llconst;
    double *eta = M->eta;
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
            lp += y * e - w * vb_softplus(e);
            eta[t] = y - w / (1.0 + exp(-e));
        }
    }
    if (grad && p > 0)
        F77_CALL(dgemv)("T", &n, &p, &done, M->X, &n, eta, &one, &dzero, grad, &one FCONE);
    for (int j = 0; j < p; j++) {
        double d = theta[j] - M->ploc[j], b = M->pscale[j];
        if (M->ptype[j] == VB_PRIOR_NORMAL) {
            lp += -0.5 * (VB_LOG2PI + 2.0 * log(b)) - 0.5 * d * d / (b * b);
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

SEXP vb_glm_result(const vb_glm *M, const double *mu, const double *Sigma, double elbo,
                   const vb_trace *tr, int it, double ll, double kl, int status, const double *tau,
                   const double *m, const double *v) {
    const char *nms[] = {"mu",       "Sigma",      "elbo",   "trace",     "loglik",
                         "kl",       "iterations", "status", "converged", "tau",
                         "eta_mean", "eta_var",    "rank",   "ewrss",     "fitted", ""};
    int np = 0, n = M->n, p = M->p;
    SEXP out = vb_named_list(nms, &np);
    SET_VECTOR_ELT(out, 0, vb_real_vec(p, mu));
    SET_VECTOR_ELT(out, 1, vb_real_mat(p, p, Sigma));
    SET_VECTOR_ELT(out, 2, Rf_ScalarReal(elbo));
    SET_VECTOR_ELT(out, 3, vb_real_vec(tr->n, tr->x));
    SET_VECTOR_ELT(out, 4, Rf_ScalarReal(ll));
    SET_VECTOR_ELT(out, 5, Rf_ScalarReal(kl));
    SET_VECTOR_ELT(out, 6, Rf_ScalarInteger(it));
    SET_VECTOR_ELT(out, 7, Rf_ScalarInteger(status));
    SET_VECTOR_ELT(out, 8, Rf_ScalarLogical(status == VB_OK));
    if (tau) SET_VECTOR_ELT(out, 9, vb_real_vec(2, tau));
    SET_VECTOR_ELT(out, 10, vb_real_vec(n, m));
    if (v) SET_VECTOR_ELT(out, 11, vb_real_vec(n, v)); /* NULL: not computed (gaussian) */
    SET_VECTOR_ELT(out, 12, Rf_ScalarInteger(NA_INTEGER));
    return out;
}

void vb_glm_result_rank(SEXP out, int rank) {
    if (rank >= 0) SET_VECTOR_ELT(out, 12, Rf_ScalarInteger(rank));
}

/*
 * The binomial fitted means E sigmoid(eta_t) from dm_t = y_t - w_t E sigmoid(eta_t),
 * the derivatives of the expected log likelihood at the returned q that the
 * fit evaluated last; NA where w_t = 0 (not evaluated: R computes those).
 */
void vb_glm_result_fitted(SEXP out, const vb_glm *M, const double *dm) {
    SEXP f = Rf_allocVector(REALSXP, M->n);
    SET_VECTOR_ELT(out, 14, f);
    double *o = REAL(f);
    for (int t = 0; t < M->n; t++)
        o[t] = M->wt[t] > 0 ? (M->y[t] - dm[t]) / M->wt[t] : NA_REAL;
}

/* The expected weighted residual sum of squares of a gaussian fit. */
void vb_glm_result_ewrss(SEXP out, double ewrss) {
    SET_VECTOR_ELT(out, 13, Rf_ScalarReal(ewrss));
}

/* ------------------------------------------------------- entry points -- */

/* log p(y, theta) and its gradient for each column of theta (d x S). */
SEXP C_glm_log_joint(SEXP model, SEXP theta) {
    vb_glm M;
    vb_glm_unpack(model, &M);
    int d = M.p + (M.family == VB_GAUSSIAN), np = 0;
    if (TYPEOF(theta) != REALSXP || !Rf_isMatrix(theta) || Rf_nrows(theta) != d)
        Rf_error("'theta' must be a double matrix with %d rows (one column per draw)", d);
    int ns = Rf_ncols(theta);
    M.eta = (double *)R_alloc(M.n + 1, sizeof(double));
    const char *nms[] = {"value", "gradient", ""};
    SEXP out = vb_named_list(nms, &np);
    SEXP val = Rf_allocVector(REALSXP, ns);
    SET_VECTOR_ELT(out, 0, val);
    SEXP gr = Rf_allocMatrix(REALSXP, d, ns);
    SET_VECTOR_ELT(out, 1, gr);
    for (int s = 0; s < ns; s++) {
        REAL(val)[s] = vb_glm_log_joint(REAL(theta) + (size_t)s * d, REAL(gr) + (size_t)s * d, &M);
        if (s % 64 == 63) R_CheckUserInterrupt();
    }
    UNPROTECT(np);
    return out;
}

/*
 * Closed-form ELBO at q(beta) = N(mu, Sigma) (dense) [and q(tau) = Gamma(tau)],
 * with its gradient in mu and in Sigma.  Used by SGVB, tests and diagnostics.
 */
SEXP C_glm_elbo(SEXP model, SEXP mu, SEXP Sigma, SEXP tau) {
    vb_glm M;
    vb_glm_unpack(model, &M);
    int n = M.n, p = M.p, one = 1, np = 0;
    if (TYPEOF(mu) != REALSXP || Rf_length(mu) != p)
        Rf_error("'mu' must be a double vector of length p");
    if (TYPEOF(Sigma) != REALSXP || !Rf_isMatrix(Sigma) || Rf_nrows(Sigma) != p ||
        Rf_ncols(Sigma) != p)
        Rf_error("'Sigma' must be a p x p double matrix");
    if (TYPEOF(tau) != REALSXP || Rf_length(tau) != 2 || !safe_scale(REAL(tau)[0]) ||
        !safe_scale(REAL(tau)[1]))
        Rf_error("'tau' must be c(shape, rate) with finite positive entries");
    for (int j = 0; j < p; j++)
        if (!R_FINITE(REAL(mu)[j])) Rf_error("'mu' must be finite");
    double A = REAL(tau)[0], B = REAL(tau)[1];
    M.Etau = A / B;
    M.Elogtau = digamma(A) - log(B);
    double *dm = (double *)R_alloc(n + 1, sizeof(double)),
           *dv = (double *)R_alloc(n + 1, sizeof(double));
    double *m = (double *)R_alloc(n + 1, sizeof(double)),
           *v = (double *)R_alloc(n + 1, sizeof(double));
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
    double F = 0;
    for (int t = 0; t < n; t++) {
        v[t] = 0;
        for (int j = 0; j < p; j++)
            v[t] += Z[t + (size_t)j * n] * Z[t + (size_t)j * n];
        F += vb_glm_obs(&M, t, m[t], v[t], dm + t, dv + t);
    }
    const char *nms[] = {"elbo", "loglik", "kl", "grad_mu", "grad_Sigma", ""};
    SEXP out = vb_named_list(nms, &np);
    SEXP gm = Rf_allocVector(REALSXP, p);
    SET_VECTOR_ELT(out, 3, gm);
    SEXP gS = Rf_allocMatrix(REALSXP, p, p);
    SET_VECTOR_ELT(out, 4, gS);
    if (p > 0) {
        F77_CALL(dgemv)("T", &n, &p, &done, M.X, &n, dm, &one, &dzero, REAL(gm), &one FCONE);
        /* d/dSigma = X' diag(dv) X + diag(dg/ds2) + 1/2 Sigma^{-1}; dv <= 0 */
        for (int t = 0; t < n; t++)
            dv[t] = -dv[t];
        vb_xtwx(n, p, M.X, n, dv, Z, REAL(gS));
        for (size_t i = 0; i < (size_t)p * p; i++)
            REAL(gS)[i] = -REAL(gS)[i];
    }
    double G = 0, a, c;
    for (int j = 0; j < p; j++) {
        G += vb_glm_prior(&M, j, REAL(mu)[j], REAL(Sigma)[j + (size_t)j * p], &a, &c);
        REAL(gm)[j] += a;
        REAL(gS)[j + (size_t)j * p] += c;
    }
    double ldet = vb_chol_logdet(p, R, p);
    info = vb_chol_inv(p, R, p);
    if (info != 0) vb_linalg_error(info, "Sigma");
    for (size_t i = 0; i < (size_t)p * p; i++)
        REAL(gS)[i] += 0.5 * R[i];
    double negkl = G + 0.5 * ldet + 0.5 * p * (1 + VB_LOG2PI);
    if (M.family == VB_GAUSSIAN) negkl += vb_glm_tau_terms(&M, A, B);
    F += M.llconst;
    SET_VECTOR_ELT(out, 0, Rf_ScalarReal(F + negkl));
    SET_VECTOR_ELT(out, 1, Rf_ScalarReal(F));
    SET_VECTOR_ELT(out, 2, Rf_ScalarReal(-negkl));
    UNPROTECT(np);
    return out;
}

/*
 * E sigmoid(eta), eta ~ N(m, v), elementwise: the binomial fitted mean, as
 * -dE[y eta - log(1 + e^eta)]/dm at y = 0 from the batched expectations of
 * the fit itself (vb_ebinom_n: the moment expansion, eight rows at a time,
 * Gauss-Hermite with gh's nodes for wide q); NA where m or v is not finite or
 * v < 0.
 */
SEXP C_binomial_mean(SEXP m, SEXP v, SEXP gh) {
    if (TYPEOF(m) != REALSXP || TYPEOF(v) != REALSXP || Rf_xlength(m) != Rf_xlength(v))
        Rf_error("'m' and 'v' must be double vectors of the same length");
    const double *x = vb_real_elt(gh, "x", -1, "gh");
    int k = Rf_length(vb_elt(gh, "x"));
    const double *w = vb_real_elt(gh, "w", k, "gh");
    if (k < 1) Rf_error("'gh' needs at least one node");
    if (Rf_xlength(m) > INT_MAX) Rf_error("'m' is too long");
    int n = (int)Rf_xlength(m);
    const double *mm = REAL(m), *vv = REAL(v);
    double *y0 = (double *)R_alloc((size_t)n + 1, sizeof(double)),
           *w1 = (double *)R_alloc((size_t)n + 1, sizeof(double)),
           *m0 = (double *)R_alloc((size_t)n + 1, sizeof(double)),
           *v0 = (double *)R_alloc((size_t)n + 1, sizeof(double));
    for (int t = 0; t < n; t++) {
        int ok = R_FINITE(mm[t]) && R_FINITE(vv[t]) && vv[t] >= 0;
        y0[t] = 0;
        w1[t] = ok;
        m0[t] = ok ? mm[t] : 0;
        v0[t] = ok ? vv[t] : 0;
    }
    SEXP out = PROTECT(Rf_allocVector(REALSXP, n));
    double *o = REAL(out);
    vb_ebinom_n(n, y0, w1, m0, v0, k, x, w, o, NULL);
    for (int t = 0; t < n; t++)
        o[t] = w1[t] > 0 ? -o[t] : NA_REAL;
    UNPROTECT(1);
    return out;
}

/*
 * Design scan: what vb_fit() needs to know about X before a fit, without an
 * n x p temporary, in one pass over X (a block of 512 rows of a column is
 * read from memory once and scanned twice while it is in cache):
 *   finite   every entry finite (the scan stops at the first column that is not);
 *   maxabs   max |x_tj| over all rows (the overflow check of X'X);
 *   mean_j   sum_t w_t x_tj / sum_t w_t, sd_j = sqrt(sum_t w_t (x_tj - mean_j)^2 / (sum w - 1))
 *            (NA when sum w <= 1), with w the moment weights (zero for rows that
 *            do not count);
 *   const_j  x_tj takes one value over the rows with w_t > 0;
 *   ones_j   x_tj == 1 on every row; ones_pos_j on the rows with w_t > 0;
 *   ranges   (only when cls is given: 1 success-only, -1 failure-only, 0 mixed,
 *            NA not counted) min and max of column j over each kind of row,
 *            rows (min, max) x (success-only, failure-only, mixed), +-Inf if none:
 *            the separation certificate of is_separated() for each column
 *            (binomial only: the other families do not pay for it).
 * Accuracy: the sums are double, in interleaved accumulators (branch-free,
 * so the loops pipeline), per block and then added up.  The first block that
 * counts gives a first mean m1; pass 2 of every block sums d_t = x_t - m1
 * (exact by Sterbenz when x_t is near m1) and d_t^2, and the scan returns
 * mean = m1 + sum w d / sum w and ss = sum w d^2 - (sum w d)^2 / sum w (the
 * corrected two-pass algorithm, Chan, Golub & LeVeque 1983, whose correction
 * cancels only as far as m1 is many sd from the mean).  The error
 * of the variance is a few n eps relative to the variance itself, whatever the
 * offset of the column (R's mean()/sd() agree within 1e-12 on 1e8 + N(0, 1)
 * columns at n = 10^4..10^6), far below what an autoscaled prior scale needs.
 * A non-finite entry shows as a non-finite sum (confirmed by vb_all_finite(),
 * since finite entries can overflow it) instead of a test per element.
 * Cost: n p reads from memory.  Checks for an interrupt between columns.
 */
typedef struct {
    int finite;
    double maxabs;
    double *mean, *sd, *ranges;
    int *cnst, *ones, *ones_pos;
} design_stats;

/*
 * sum_t w_t x_t, and the min and max of x, in four lanes each (minsd/maxsd,
 * no branch).  The sum is NaN when some x_t is NA, NaN or +-Inf (w_t is
 * finite, and 0 * Inf is NaN); it can also be +-Inf or NaN from an overflow
 * of finite entries, which the caller tells apart.
 */
static void scan_seg1(int n, const double *x, const double *w, double *swx, double *lo,
                      double *hi) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0, l0 = R_PosInf, l1 = R_PosInf, l2 = R_PosInf,
           l3 = R_PosInf, h0 = R_NegInf, h1 = R_NegInf, h2 = R_NegInf, h3 = R_NegInf;
    int t = 0;
    for (; t + 4 <= n; t += 4) {
        double a0 = x[t], a1 = x[t + 1], a2 = x[t + 2], a3 = x[t + 3];
        s0 += w[t] * a0;
        s1 += w[t + 1] * a1;
        s2 += w[t + 2] * a2;
        s3 += w[t + 3] * a3;
        l0 = a0 < l0 ? a0 : l0;
        l1 = a1 < l1 ? a1 : l1;
        l2 = a2 < l2 ? a2 : l2;
        l3 = a3 < l3 ? a3 : l3;
        h0 = a0 > h0 ? a0 : h0;
        h1 = a1 > h1 ? a1 : h1;
        h2 = a2 > h2 ? a2 : h2;
        h3 = a3 > h3 ? a3 : h3;
    }
    for (; t < n; t++) {
        double a = x[t];
        s0 += w[t] * a;
        l0 = a < l0 ? a : l0;
        h0 = a > h0 ? a : h0;
    }
    l0 = l1 < l0 ? l1 : l0;
    l2 = l3 < l2 ? l3 : l2;
    h0 = h1 > h0 ? h1 : h0;
    h2 = h3 > h2 ? h3 : h2;
    *swx = (s0 + s1) + (s2 + s3);
    *lo = l2 < l0 ? l2 : l0;
    *hi = h2 > h0 ? h2 : h0;
}

/* sum_t w_t d_t and sum_t w_t d_t^2, d_t = x_t - m. */
static void scan_seg2(int n, const double *x, const double *w, double m, double *swd,
                      double *swdd) {
    double s0 = 0, s1 = 0, q0 = 0, q1 = 0;
    int t = 0;
    for (; t + 2 <= n; t += 2) {
        double d0 = x[t] - m, d1 = x[t + 1] - m, e0 = w[t] * d0, e1 = w[t + 1] * d1;
        s0 += e0;
        s1 += e1;
        q0 += e0 * d0;
        q1 += e1 * d1;
    }
    for (; t < n; t++) {
        double d = x[t] - m, e = w[t] * d;
        s0 += e;
        q0 += e * d;
    }
    *swd = s0 + s1;
    *swdd = q0 + q1;
}

#define SCAN_BLOCK 512 /* rows per block of the scan: a column block stays in L1 */

/* min and max of x over the rows with w_t > 0 */
static void scan_positive(int n, const double *x, const double *w, double *lo, double *hi) {
    double l = R_PosInf, h = R_NegInf;
    for (int t = 0; t < n; t++) {
        int on = w[t] > 0;
        double a = x[t], al = on ? a : R_PosInf, ah = on ? a : R_NegInf;
        l = al < l ? al : l;
        h = ah > h ? ah : h;
    }
    *lo = l;
    *hi = h;
}

/*
 * min and max of x over the rows idx[0..m-1] into lo, hi (updated), in two
 * lanes: the rows of one kind (success-only, failure-only, mixed) are listed
 * once, so a column's ranges cost a gather per row instead of a branch (the
 * kinds of 0/1 data are as good as random: a branch mispredicts every other row).
 */
static void idx_range(int m, const int *idx, const double *x, double *lo, double *hi) {
    double l0 = *lo, l1 = *lo, h0 = *hi, h1 = *hi;
    int i = 0;
    for (; i + 2 <= m; i += 2) {
        double a = x[idx[i]], b = x[idx[i + 1]];
        l0 = a < l0 ? a : l0;
        h0 = a > h0 ? a : h0;
        l1 = b < l1 ? b : l1;
        h1 = b > h1 ? b : h1;
    }
    for (; i < m; i++) {
        double a = x[idx[i]];
        l0 = a < l0 ? a : l0;
        h0 = a > h0 ? a : h0;
    }
    *lo = l1 < l0 ? l1 : l0;
    *hi = h1 > h0 ? h1 : h0;
}

static int design_scan(int n, int p, const double *X, const double *w, const int *cls,
                       design_stats *D) {
    double sw = 0;
    int allpos = 1;
    for (int t = 0; t < n; t++) {
        sw += w[t];
        allpos &= w[t] > 0;
    }
    /* the rows of each kind (success-only, failure-only, mixed), in order */
    int *rows = NULL, cnt[3] = {0, 0, 0}, *kind[3] = {NULL, NULL, NULL};
    if (cls) {
        for (int t = 0; t < n; t++) {
            int c = cls[t];
            cnt[0] += c > 0;
            cnt[1] += c < 0 && c != NA_INTEGER;
            cnt[2] += c == 0;
        }
        rows = (int *)R_alloc((size_t)cnt[0] + cnt[1] + cnt[2] + 1, sizeof(int));
        kind[0] = rows;
        kind[1] = rows + cnt[0];
        kind[2] = kind[1] + cnt[1];
        int f0 = 0, f1 = 0, f2 = 0;
        for (int t = 0; t < n; t++) {
            int c = cls[t];
            if (c > 0)
                kind[0][f0++] = t;
            else if (c == 0)
                kind[2][f2++] = t;
            else if (c != NA_INTEGER)
                kind[1][f1++] = t;
        }
    }
    /* per column: range; weight, shift M, sums of w d and w d^2 (d = x - M) */
    double *lo = (double *)R_alloc((size_t)6 * p + 1, sizeof(double)), *hi = lo + p, *W = hi + p,
           *M = W + p, *S1 = M + p, *Q = S1 + p;
    int ks[3] = {0, 0, 0}, ke[3] = {0, 0, 0}, overflow = 0; /* a block's rows in kind[k] */
    for (int j = 0; j < p; j++) {
        lo[j] = R_PosInf;
        hi[j] = R_NegInf;
        W[j] = M[j] = S1[j] = Q[j] = 0;
        if (cls)
            for (int i = 0; i < 6; i++)
                D->ranges[(size_t)6 * j + i] = i % 2 ? R_NegInf : R_PosInf;
    }
    D->finite = 1;
    D->maxabs = 0;
    /* a block of rows at a time, every column of it (X and w are read from
     * memory once); each column's block is scanned twice while in cache */
    for (int t0 = 0, nblk = 0; t0 < n; t0 += SCAN_BLOCK, nblk++) {
        int nc = n - t0 < SCAN_BLOCK ? n - t0 : SCAN_BLOCK;
        double wb = 0;
        for (int t = t0; t < t0 + nc; t++)
            wb += w[t];
        for (int k = 0; cls && k < 3; k++) {
            ks[k] = ke[k];
            while (ke[k] < cnt[k] && kind[k][ke[k]] < t0 + nc)
                ke[k]++;
        }
        for (int j = 0; j < p; j++) {
            const double *x = X + (size_t)j * n;
            double swx, bl, bh;
            scan_seg1(nc, x + t0, w + t0, &swx, &bl, &bh);
            lo[j] = bl < lo[j] ? bl : lo[j];
            hi[j] = bh > hi[j] ? bh : hi[j];
            for (int k = 0; cls && k < 3; k++) { /* this block's rows of kind k */
                double *r = D->ranges + (size_t)6 * j + 2 * k;
                idx_range(ke[k] - ks[k], kind[k] + ks[k], x, r, r + 1);
            }
            if (!R_FINITE(swx)) {
                if (!vb_all_finite(nc, x + t0)) { /* an entry is NA, NaN or infinite */
                    D->finite = 0;
                    return VB_OK;
                }
                overflow = 1; /* finite entries whose sum overflows */
                continue;
            }
            if (!(wb > 0)) continue;
            /* the shift: the mean of the first block that counts */
            if (W[j] == 0) M[j] = swx / wb;
            double swd, swdd;
            scan_seg2(nc, x + t0, w + t0, M[j], &swd, &swdd);
            W[j] += wb;
            S1[j] += swd;
            Q[j] += swdd;
        }
        if ((nblk & 255) == 255 && vb_interrupted()) return VB_INTERRUPTED;
    }
    for (int j = 0; j < p; j++) {
        const double *x = X + (size_t)j * n;
        double plo, phi, ss = W[j] > 0 ? Q[j] - S1[j] * S1[j] / W[j] : 0;
        if (W[j] > 0) M[j] += S1[j] / W[j];
        if (ss < 0) ss = 0;
        /* maxabs makes vb_fit() refuse an X whose sums overflow */
        if (overflow || !R_FINITE(M[j]) || !R_FINITE(ss)) D->maxabs = R_PosInf;
        if (allpos) {
            plo = lo[j];
            phi = hi[j];
        } else
            scan_positive(n, x, w, &plo, &phi);
        D->mean[j] = sw > 0 ? M[j] : NA_REAL;
        D->sd[j] = sw > 1 ? sqrt(ss / (sw - 1)) : NA_REAL;
        D->cnst[j] = !(plo < phi);
        D->ones[j] = lo[j] == 1 && hi[j] == 1;
        D->ones_pos[j] = plo == 1 && phi == 1;
        if (fabs(lo[j]) > D->maxabs) D->maxabs = fabs(lo[j]);
        if (fabs(hi[j]) > D->maxabs) D->maxabs = fabs(hi[j]);
    }
    return VB_OK;
}

SEXP C_design_scan(SEXP X, SEXP w, SEXP cls) {
    if (TYPEOF(X) != REALSXP || !Rf_isMatrix(X)) Rf_error("'X' must be a double matrix");
    int n = Rf_nrows(X), p = Rf_ncols(X);
    if (TYPEOF(w) != REALSXP || Rf_xlength(w) != n)
        Rf_error("'w' must be a double vector with one value per row of 'X'");
    const double *wv = REAL(w);
    double wmin = 0, z = 0;
    for (int t = 0; t < n; t++) { /* z: NaN once some w_t is not finite */
        z += wv[t] * 0;
        wmin = wv[t] < wmin ? wv[t] : wmin;
    }
    if (!R_FINITE(z) || wmin < 0) Rf_error("'w' must be finite and non-negative");
    int has_cls = !Rf_isNull(cls);
    if (has_cls && (TYPEOF(cls) != INTSXP || Rf_xlength(cls) != n))
        Rf_error("'cls' must be NULL or an integer vector with one value per row of 'X'");
    const char *nm[] = {"status", "finite", "maxabs",   "mean",   "sd",
                        "const",  "ones",   "ones_pos", "ranges", ""};
    int np = 0;
    SEXP out = vb_named_list(nm, &np);
    SEXP mean = Rf_allocVector(REALSXP, p);
    SET_VECTOR_ELT(out, 3, mean);
    SEXP sd = Rf_allocVector(REALSXP, p);
    SET_VECTOR_ELT(out, 4, sd);
    SEXP cn = Rf_allocVector(LGLSXP, p);
    SET_VECTOR_ELT(out, 5, cn);
    SEXP on = Rf_allocVector(LGLSXP, p);
    SET_VECTOR_ELT(out, 6, on);
    SEXP op = Rf_allocVector(LGLSXP, p);
    SET_VECTOR_ELT(out, 7, op);
    SEXP rg = R_NilValue;
    if (has_cls) {
        rg = Rf_allocMatrix(REALSXP, 6, p);
        SET_VECTOR_ELT(out, 8, rg);
    }
    design_stats D = {0,           0,           REAL(mean), REAL(sd), has_cls ? REAL(rg) : NULL,
                      LOGICAL(cn), LOGICAL(on), LOGICAL(op)};
    for (int j = 0; j < p; j++) { /* defined even where the scan stops early */
        D.mean[j] = D.sd[j] = NA_REAL;
        D.cnst[j] = D.ones[j] = D.ones_pos[j] = NA_LOGICAL;
    }
    if (has_cls)
        for (size_t i = 0; i < (size_t)6 * p; i++)
            D.ranges[i] = NA_REAL;
    int st = design_scan(n, p, REAL(X), REAL(w), has_cls ? INTEGER(cls) : NULL, &D);
    SET_VECTOR_ELT(out, 0, Rf_ScalarInteger(st));
    SET_VECTOR_ELT(out, 1, Rf_ScalarLogical(D.finite));
    SET_VECTOR_ELT(out, 2, Rf_ScalarReal(D.maxabs));
    UNPROTECT(np);
    return out;
}

/* X - 1 centre' (a new n x p matrix, one pass): the design the engines see. */
SEXP C_centre_design(SEXP X, SEXP centre) {
    if (TYPEOF(X) != REALSXP || !Rf_isMatrix(X)) Rf_error("'X' must be a double matrix");
    int n = Rf_nrows(X), p = Rf_ncols(X);
    if (TYPEOF(centre) != REALSXP || Rf_xlength(centre) != p)
        Rf_error("'centre' must be a double vector with one value per column of 'X'");
    SEXP out = PROTECT(Rf_allocMatrix(REALSXP, n, p));
    Rf_setAttrib(out, R_DimNamesSymbol, Rf_getAttrib(X, R_DimNamesSymbol));
    const double *x = REAL(X), *c = REAL(centre);
    double *o = REAL(out);
    for (int j = 0; j < p; j++) {
        double cj = c[j];
        const double *xj = x + (size_t)j * n;
        double *oj = o + (size_t)j * n;
        for (int t = 0; t < n; t++)
            oj[t] = xj[t] - cj;
    }
    UNPROTECT(1);
    return out;
}

/*
 * The response checks of vb_fit() and the sums the default priors and the
 * start need, in one pass over y, w and offset (no n-vector temporaries in R).
 * y, w, off: double vectors of length n; fam: 0 gaussian, 1 poisson, 2 binomial.
 * Returns list(bad, cls, mw, ystats):
 *   bad     0, or the first failed check: 1 y, 2 w, 3 offset not finite;
 *           4 a negative weight; 5 no positive weight; 6 (gaussian) the sum
 *           of squares of y about its mean overflows; 7 (poisson) y not
 *           non-negative whole numbers; 8 (binomial) w not whole; 9
 *           (binomial) y not whole in 0..w;
 *   cls     binomial: 1 success-only (y = w), -1 failure-only (y = 0), 0
 *           mixed, NA for w = 0 (the rows of the separation check); else NULL;
 *   mw      the design scan's moment weights: w for binomial, else 1 (w > 0);
 *   ystats  over the rows with w > 0: npos, sum w, sum w y, sum w (y - off),
 *           sum w exp(off), mean off, and unweighted mean y, sd y, mean (y - off),
 *           sum w (y - mean y)^2 (two passes: the deviations about the mean).
 */
SEXP C_glm_response(SEXP y_, SEXP w_, SEXP off_, SEXP fam_) {
    R_xlen_t n = Rf_xlength(y_);
    if (TYPEOF(y_) != REALSXP || TYPEOF(w_) != REALSXP || TYPEOF(off_) != REALSXP ||
        Rf_xlength(w_) != n || Rf_xlength(off_) != n)
        Rf_error("'y', 'w' and 'off' must be double vectors of the same length");
    int fam = Rf_length(fam_) == 1 && Rf_isNumeric(fam_) ? Rf_asInteger(fam_) : -1;
    if (fam < 0 || fam > 2) Rf_error("'fam' must be 0, 1 or 2");
    const double *y = REAL(y_), *w = REAL(w_), *off = REAL(off_);
    const char *nm[] = {"bad", "cls", "mw", "ystats", ""};
    int np = 0, bad = 0;
    SEXP out = vb_named_list(nm, &np);
    SEXP mw = Rf_allocVector(REALSXP, n);
    SET_VECTOR_ELT(out, 2, mw);
    SEXP cls = R_NilValue;
    if (fam == 2) {
        cls = Rf_allocVector(INTSXP, n);
        SET_VECTOR_ELT(out, 1, cls);
    }
    /* finiteness probes (x * 0 is NaN only where x is not finite), min w, the
     * rows that count and sum y, in two lanes (no branch per row) */
    double z[2] = {0, 0}, wmin = 0, ys[2] = {0, 0}, yss = 0;
    R_xlen_t anypos = 0;
    for (R_xlen_t t = 0; t < n; t++) {
        z[t & 1] += y[t] * 0 + w[t] * 0 + off[t] * 0;
        wmin = w[t] < wmin ? w[t] : wmin;
        anypos += w[t] > 0;
        ys[t & 1] += y[t];
    }
    if (!R_FINITE(z[0] + z[1])) /* which one */
        bad = !vb_all_finite(n, y) ? 1 : !vb_all_finite(n, w) ? 2 : 3;
    else if (wmin < 0)
        bad = 4;
    else if (anypos == 0)
        bad = 5;
    else if (fam == 0) {
        double my = (ys[0] + ys[1]) / n;
        for (R_xlen_t t = 0; t < n; t++)
            yss += w[t] * (y[t] - my) * (y[t] - my);
        if (!R_FINITE(yss)) bad = 6;
    } else if (fam == 1) {
        for (R_xlen_t t = 0; t < n && !bad; t++)
            if (y[t] < 0 || y[t] != nearbyint(y[t])) bad = 7;
    } else {
        for (R_xlen_t t = 0; t < n && !bad; t++)
            if (w[t] != nearbyint(w[t])) bad = 8;
        for (R_xlen_t t = 0; t < n && !bad; t++)
            if (y[t] < 0 || y[t] != nearbyint(y[t]) || y[t] > w[t]) bad = 9;
    }
    SEXP ys_ = Rf_allocVector(REALSXP, 10);
    SET_VECTOR_ELT(out, 3, ys_);
    double *S = REAL(ys_);
    for (int i = 0; i < 10; i++)
        S[i] = NA_REAL;
    if (!bad) {
        double *m = REAL(mw);
        for (R_xlen_t t = 0; t < n; t++)
            m[t] = fam == 2 ? w[t] : w[t] > 0;
        if (fam == 2) {
            int *c = INTEGER(cls);
            for (R_xlen_t t = 0; t < n; t++)
                c[t] = w[t] > 0 ? (y[t] == w[t]) - (y[t] == 0) : NA_INTEGER;
        }
        /* weighted sums need no mask (w = 0 adds 0); unweighted ones take on_t */
        double sw = 0, swy = 0, swyo = 0, swe = 0, so = 0, sy = 0, syo = 0;
        for (R_xlen_t t = 0; t < n; t++) {
            double wt = w[t], on = wt > 0;
            sw += wt;
            swy += wt * y[t];
            swyo += wt * (y[t] - off[t]);
            so += on * off[t];
            sy += on * y[t];
            syo += on * (y[t] - off[t]);
        }
        if (fam == 1)
            for (R_xlen_t t = 0; t < n; t++)
                if (w[t] > 0) swe += w[t] * exp(off[t]);
        double npos = (double)anypos, my = sy / npos, myo = syo / npos, dd = 0, wdd = 0;
        for (R_xlen_t t = 0; t < n; t++) {
            double d = y[t] - my, on = w[t] > 0;
            dd += on * d * d;
            wdd += w[t] * d * d;
        }
        S[0] = npos;
        S[1] = sw;
        S[2] = swy;
        S[3] = swyo;
        S[4] = swe;
        S[5] = so / npos;
        S[6] = my;
        S[7] = npos > 1 ? sqrt(dd / (npos - 1)) : NA_REAL;
        S[8] = myo;
        S[9] = wdd;
    }
    SEXP nms = PROTECT(Rf_allocVector(STRSXP, 10));
    const char *sn[] = {"npos", "sw", "swy", "swyo", "swexpoff", "mean_off", "mean_y", "sd_y",
                        "mean_yoff", "ydev2"};
    for (int i = 0; i < 10; i++)
        SET_STRING_ELT(nms, i, Rf_mkChar(sn[i]));
    Rf_setAttrib(ys_, R_NamesSymbol, nms);
    SET_VECTOR_ELT(out, 0, Rf_ScalarInteger(bad));
    UNPROTECT(np + 1);
    return out;
}

/*
 * min and max of u over the success-only (cls 1), failure-only (-1) and
 * mixed (0) rows, +-Inf for a kind with no rows (NA rows not counted): the
 * ranges of is_separated() for one direction u = X d.
 */
SEXP C_class_ranges(SEXP u, SEXP cls) {
    if (TYPEOF(u) != REALSXP || TYPEOF(cls) != INTSXP || Rf_xlength(u) != Rf_xlength(cls))
        Rf_error("'u' must be a double vector and 'cls' an integer vector of the same length");
    R_xlen_t n = Rf_xlength(u);
    const double *x = REAL(u);
    const int *c = INTEGER(cls);
    SEXP out = PROTECT(Rf_allocVector(REALSXP, 6));
    double *r = REAL(out);
    for (int i = 0; i < 6; i++)
        r[i] = i % 2 ? R_NegInf : R_PosInf;
    for (R_xlen_t t = 0; t < n; t++) {
        if (c[t] == NA_INTEGER) continue;
        double *q = r + (c[t] > 0 ? 0 : c[t] < 0 ? 2 : 4);
        if (x[t] < q[0]) q[0] = x[t];
        if (x[t] > q[1]) q[1] = x[t];
    }
    UNPROTECT(1);
    return out;
}
