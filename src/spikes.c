/*
 * spikes.c — the two loops of the spike-train toolkit (R/spikes.R).
 *
 * C_spikes_history: causal convolution of a series with a lag basis.
 *   Model: H[t, j] = sum_l B[l, j] x[t - (first_lag + l)], l = 0..L-1, where
 *   only x from the same segment (trial) as t counts.  Row t never sees x[t]
 *   when first_lag >= 1.  Inputs: x (n), B (L x k), seg (n ints, 1 where a
 *   new segment starts; seg[0] is treated as 1), first_lag (>= 0).
 *   Output: H (n x k).  Cost O(nnz(x) L k): zeros of x (most bins of a spike
 *   train) are skipped, so a sparse train costs far less than n L k.
 *
 * C_spikes_simulate: spikes generated bin by bin through a history filter.
 *   Model: eta[t, s] = eta0[t, s] + sum_{l=1..L} h[l, s] y[t - l, s] (same
 *   segment only); y[t, s] ~ Poisson(exp(eta)) (family 1) or
 *   Bernoulli(logistic(eta)) (family 2).  Inputs: eta0 (n x S, the drive
 *   from every term except the response's own history, offset included),
 *   h (L x S, the filter at lags 1..L, one column per simulation), seg (n),
 *   control = c(family, cap).  A Poisson mean above cap is set to cap and
 *   counted, so a runaway (unstable) filter is reported rather than
 *   overflowing.  Output: list(y = n x S, capped = number of capped bins).
 *   Cost O(n S L); R's RNG (GetRNGstate/PutRNGstate), so set.seed() repeats.
 */
#include "vbayes.h"
#include <limits.h>

/* ---------------------------------------------------------------- history */

static void history_worker(const double *x, const double *B, const int *seg, int n, int L, int k,
                           int first_lag, double *H) {
    for (R_xlen_t i = 0; i < (R_xlen_t)n * k; i++)
        H[i] = 0.0;
    if (first_lag >= n) return; /* every lag reaches before the series */
    /* end[t] = one past the last row of t's segment */
    int seg_end = n;
    for (int s = n - 1; s >= 0; s--) {
        if (s % 4096 == 0) R_CheckUserInterrupt();
        if (s + 1 < n && seg[s + 1]) seg_end = s + 1;
        double xs = x[s];
        if (xs == 0.0) continue;
        for (int l = 0; l < L; l++) {
            R_xlen_t t = (R_xlen_t)s + first_lag + l;
            if (t >= seg_end) break;
            for (int j = 0; j < k; j++)
                H[t + (R_xlen_t)j * n] += xs * B[l + (R_xlen_t)j * L];
        }
    }
}

SEXP C_spikes_history(SEXP x, SEXP basis, SEXP seg, SEXP first_lag) {
    if (!Rf_isReal(x)) Rf_error("'x' must be a double vector");
    if (!Rf_isReal(basis) || !Rf_isMatrix(basis)) Rf_error("'basis' must be a double matrix");
    if (!Rf_isInteger(seg) || XLENGTH(seg) != XLENGTH(x))
        Rf_error("'seg' must be an integer vector as long as 'x'");
    if (!Rf_isInteger(first_lag) || XLENGTH(first_lag) != 1 || INTEGER(first_lag)[0] < 0 ||
        INTEGER(first_lag)[0] == NA_INTEGER)
        Rf_error("'first_lag' must be one non-negative integer");
    if (XLENGTH(x) > INT_MAX) Rf_error("'x' is too long");
    int n = (int)XLENGTH(x), L = Rf_nrows(basis), k = Rf_ncols(basis);
    const double *px = REAL(x);
    for (int t = 0; t < n; t++)
        if (!R_FINITE(px[t])) Rf_error("'x' must be finite");
    SEXP H = PROTECT(Rf_allocMatrix(REALSXP, n, k));
    history_worker(px, REAL(basis), INTEGER(seg), n, L, k, INTEGER(first_lag)[0], REAL(H));
    UNPROTECT(1);
    return H;
}

/* ------------------------------------------------------------- simulation */

/* Returns VB_OK or VB_INTERRUPTED; *capped counts the bins whose rate hit cap. */
static int simulate_worker(const double *eta0, const double *h, const int *seg, int n, int L, int S,
                           int family, double cap, double *y, int *capped) {
    *capped = 0;
    for (int s = 0; s < S; s++) {
        const double *e0 = eta0 + (R_xlen_t)s * n, *hs = h + (R_xlen_t)s * L;
        double *ys = y + (R_xlen_t)s * n;
        int start = 0;
        for (int t = 0; t < n; t++) {
            if (t % 1024 == 0 && vb_interrupted()) return VB_INTERRUPTED;
            if (t == 0 || seg[t]) start = t;
            double eta = e0[t];
            int lmax = t - start < L ? t - start : L;
            for (int l = 1; l <= lmax; l++) {
                double yp = ys[t - l];
                if (yp != 0.0) eta += hs[l - 1] * yp;
            }
            if (family == VB_POISSON) {
                double lam = exp(eta);
                if (!(lam <= cap)) { /* also catches NaN */
                    lam = cap;
                    (*capped)++;
                }
                ys[t] = Rf_rpois(lam);
            } else {
                double p = 1.0 / (1.0 + exp(-eta));
                ys[t] = unif_rand() < p ? 1.0 : 0.0;
            }
        }
    }
    return VB_OK;
}

/* control: list(family = VB_POISSON or VB_BINOMIAL (bernoulli), cap = largest rate) */
SEXP C_spikes_simulate(SEXP eta0, SEXP h, SEXP seg, SEXP control) {
    if (!Rf_isReal(eta0) || !Rf_isMatrix(eta0)) Rf_error("'eta0' must be a double matrix");
    if (!Rf_isReal(h) || !Rf_isMatrix(h)) Rf_error("'h' must be a double matrix");
    int n = Rf_nrows(eta0), S = Rf_ncols(eta0), L = Rf_nrows(h);
    if (Rf_ncols(h) != S) Rf_error("'h' must have one column per simulation");
    if (!Rf_isInteger(seg) || XLENGTH(seg) != n)
        Rf_error("'seg' must be an integer vector with one entry per bin");
    int family = vb_int_elt(control, "family", VB_POISSON, VB_BINOMIAL, "control");
    double cap = vb_num_elt(control, "cap", 0, R_PosInf, "control");
    if (!(cap > 0)) Rf_error("'control$cap' must be positive");
    const double *pe = REAL(eta0), *ph = REAL(h);
    for (R_xlen_t i = 0; i < XLENGTH(eta0); i++)
        if (ISNAN(pe[i])) Rf_error("'eta0' must not contain NaN");
    for (R_xlen_t i = 0; i < XLENGTH(h); i++)
        if (!R_FINITE(ph[i])) Rf_error("'h' must be finite");
    int np = 0, capped = 0;
    const char *nms[] = {"y", "capped", "status", ""};
    SEXP out = vb_named_list(nms, &np);
    SEXP y = Rf_allocMatrix(REALSXP, n, S);
    SET_VECTOR_ELT(out, 0, y);
    GetRNGstate();
    int status = simulate_worker(pe, ph, INTEGER(seg), n, L, S, family, cap, REAL(y), &capped);
    PutRNGstate();
    SET_VECTOR_ELT(out, 1, Rf_ScalarInteger(capped));
    SET_VECTOR_ELT(out, 2, Rf_ScalarInteger(status));
    UNPROTECT(np);
    return out;
}
