/*
 * linalg.c — the few dense operations the engines need, on R's BLAS/LAPACK.
 *
 * Workers receive status codes (LAPACK's `info`) and pass them up; only the
 * .Call wrappers turn them into R errors, through vb_linalg_error(), so a
 * failure never leaves a worker half-way through with the R API.
 * Matrices are column-major; Cholesky factors are upper triangular (A = R'R).
 */
#include "vbayes.h"

/* Upper Cholesky factor of the p x p matrix A (lower triangle left untouched). */
int vb_chol(int p, double *A, int lda) {
    int info = 0;
    if (p == 0) return 0;
    F77_CALL(dpotrf)("U", &p, A, &lda, &info FCONE);
    return info;
}

double vb_chol_logdet(int p, const double *R, int ldr) {
    double s = 0.0;
    for (int i = 0; i < p; i++)
        s += log(R[i + (size_t)i * ldr]);
    return 2.0 * s;
}

/* Overwrites the factor R with the full symmetric inverse of A = R'R. */
int vb_chol_inv(int p, double *R, int ldr) {
    int info = 0;
    if (p == 0) return 0;
    F77_CALL(dpotri)("U", &p, R, &ldr, &info FCONE);
    if (info == 0) vb_symmetrize(p, R);
    return info;
}

/* Solves (R'R) x = b in place. */
void vb_chol_solve(int p, const double *R, int ldr, double *b) {
    int one = 1;
    if (p == 0) return;
    F77_CALL(dtrsv)("U", "T", "N", &p, R, &ldr, b, &one FCONE FCONE FCONE);
    F77_CALL(dtrsv)("U", "N", "N", &p, R, &ldr, b, &one FCONE FCONE FCONE);
}

void vb_symmetrize(int p, double *A) {
    for (int j = 0; j < p; j++)
        for (int i = j + 1; i < p; i++)
            A[i + (size_t)j * p] = A[j + (size_t)i * p];
}

/*
 * Rows per chunk of the two O(n k^2) passes below: a chunk of k columns that
 * stays in the L2 cache (about 1 MB: 128 K doubles) while dsyrk / dtrsm sweep
 * it k times, at most VB_CHUNK (the callers' work size).  On the reference
 * BLAS, which does not block for the cache, this is 15-20% faster at k = 200
 * than chunks of VB_CHUNK rows (6.5 MB), and never slower at small k.
 */
static int cache_rows(int k) {
    int r = k > 0 ? 131072 / k : VB_CHUNK;
    r -= r % 8;
    return r < 128 ? 128 : r > VB_CHUNK ? VB_CHUNK : r;
}

/*
 * out = X' diag(w) X (k x k, full), w >= 0, by dsyrk on sqrt(w) * X in row
 * chunks of cache_rows(k) <= VB_CHUNK, checking for an interrupt between chunks (one call can
 * cost seconds at large n k^2).  With unit weights dsyrk reads X in place (no
 * copy of the chunk).  work holds min(n, VB_CHUNK) * k doubles.
 * Cost n k^2 flops.  Returns VB_OK or VB_INTERRUPTED.
 */
int vb_xtwx(int n, int k, const double *X, int ldx, const double *w, double *work, double *out) {
    double one = 1.0, zero = 0.0;
    if (k == 0) return VB_OK;
    if (n == 0) {
        memset(out, 0, sizeof(double) * (size_t)k * k);
        return VB_OK;
    }
    int ch = cache_rows(k), unit = 1;
    for (int t = 0; t < n; t++)
        unit &= w[t] == 1;
    double sw[VB_CHUNK]; /* sqrt(w) of a chunk: one sqrt per row, not per entry */
    for (int t0 = 0; t0 < n; t0 += ch) {
        int nc = n - t0 < ch ? n - t0 : ch;
        if (unit) { /* X'X: dsyrk reads the chunk of X in place, no copy */
            F77_CALL(dsyrk)
            ("U", "T", &k, &nc, &one, X + t0, &ldx, t0 == 0 ? &zero : &one, out, &k FCONE FCONE);
        } else {
            for (int t = 0; t < nc; t++)
                sw[t] = sqrt(w[t0 + t]);
            for (int j = 0; j < k; j++) {
                const double *xj = X + (size_t)j * ldx + t0;
                double *zj = work + (size_t)j * nc;
                for (int t = 0; t < nc; t++)
                    zj[t] = sw[t] * xj[t];
            }
            F77_CALL(dsyrk)
            ("U", "T", &k, &nc, &one, work, &nc, t0 == 0 ? &zero : &one, out, &k FCONE FCONE);
        }
        if (n > VB_CHUNK && vb_interrupted()) return VB_INTERRUPTED;
    }
    vb_symmetrize(k, out);
    return VB_OK;
}

/*
 * out_t = || R^{-T} x_t ||^2 = x_t' A^{-1} x_t for the rows x_t of X (n x k),
 * A = R'R upper Cholesky: the variance of x_t'beta under N(., A^{-1}).  One
 * dtrsm per chunk of cache_rows(k) rows; work holds min(n, VB_CHUNK) * k doubles.
 * Cost n k^2 flops.  Returns VB_OK or VB_INTERRUPTED.
 */
int vb_rowvar(int n, int k, const double *X, int ldx, const double *R, double *work, double *out) {
    double one = 1.0;
    int ch = cache_rows(k);
    for (int t0 = 0; t0 < n; t0 += ch) {
        int nc = n - t0 < ch ? n - t0 : ch;
        for (int j = 0; j < k; j++)
            memcpy(work + (size_t)j * nc, X + (size_t)j * ldx + t0, sizeof(double) * nc);
        if (k > 0) F77_CALL(dtrsm)
        ("R", "U", "N", "N", &nc, &k, &one, R, &k, work, &nc FCONE FCONE FCONE FCONE);
        for (int t = 0; t < nc; t++)
            out[t0 + t] = 0;
        for (int j = 0; j < k; j++)
            for (int t = 0; t < nc; t++)
                out[t0 + t] += work[t + (size_t)j * nc] * work[t + (size_t)j * nc];
        if (n > VB_CHUNK && vb_interrupted()) return VB_INTERRUPTED;
    }
    return VB_OK;
}

void vb_linalg_error(int info, const char *what) {
    if (info > 0)
        Rf_error("%s: the matrix is not positive definite (leading minor %d); "
                 "check for non-finite values or an improper prior",
                 what, info);
    if (info < 0) Rf_error("%s: LAPACK argument %d was invalid (internal error)", what, -info);
}

/* LAPACK's info as a status: > 0 a leading minor not positive definite, < 0 a bad argument. */
int vb_lapack_status(int info) {
    return info == 0 ? VB_OK : info > 0 ? VB_NOT_PD : VB_LAPACK_ARG;
}

/*
 * Numerical rank of a p x p Gram matrix G = X'WX (W > 0 on the rows that
 * count): pivoted Cholesky (dpstrf, tol 1e-9) of G scaled to unit diagonal,
 * the test R's chol(pivot = TRUE) makes, so the rank is that of the rows of X
 * with positive weight.  work: p^2 + 4p doubles (the pivots fit in p).
 * Returns the rank, or -1 when LAPACK failed.  Cost p^3/3.
 */
int vb_gram_rank(int p, const double *G, double *work) {
    if (p == 0) return 0;
    double *A = work, *d = work + (size_t)p * p, *wk = d + p, tol = 1e-9;
    int *piv = (int *)(wk + 2 * (size_t)p), rank = 0, info = 0;
    for (int j = 0; j < p; j++) {
        double g = G[j + (size_t)j * p];
        d[j] = g > 0 ? 1.0 / sqrt(g) : 1.0;
    }
    for (int j = 0; j < p; j++)
        for (int i = 0; i < p; i++)
            A[i + (size_t)j * p] = G[i + (size_t)j * p] * d[i] * d[j];
    F77_CALL(dpstrf)("U", &p, A, &p, piv, &rank, &tol, wk, &info FCONE);
    return info < 0 ? -1 : rank;
}
