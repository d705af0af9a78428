/*
 * btd.c — the block-tridiagonal solver: the Gaussian smoother shared by the
 * latent dynamical system (lds_*.c) and any engine whose posterior precision
 * is block tridiagonal (hierarchical GLMs over time, predictive coding).
 *
 * Model.  A Gaussian in information form, N(Lambda^{-1} b, Lambda^{-1}),
 * Lambda symmetric positive definite with d x d diagonal blocks D_t and
 * sub-diagonal blocks L_t = Lambda_{t,t-1} (t = 1..T-1).
 *
 * Algorithm.  Forward elimination (the information-form Kalman filter):
 *   F_0 = D_0,  f_0 = b_0,
 *   F_t = D_t - L_t F_{t-1}^{-1} L_t',  f_t = b_t - L_t F_{t-1}^{-1} f_{t-1},
 * so |Lambda| = prod_t |F_t| and z_t | z_{t+1} ~ N(F_t^{-1}(f_t - L_{t+1}' z_{t+1}), F_t^{-1}).
 * Backward pass (the RTS smoother), G_t = -F_t^{-1} L_{t+1}':
 *   m_{T-1} = F_{T-1}^{-1} f_{T-1},  S_{T-1} = F_{T-1}^{-1},
 *   m_t = F_t^{-1} f_t + G_t m_{t+1},
 *   Sigma_{t+1,t} = S_{t+1} G_t',  S_t = F_t^{-1} + G_t S_{t+1} G_t'.
 *
 * Interface (prototype and the full contract in vbayes.h): inputs T, d, D
 * (T blocks), L with stride lstride (0: one constant block; d*d: T blocks,
 * L_0 unused), b (d x T); outputs m, S, Sc (Sc_0 = 0), log|Sigma|; work of
 * VB_BTD_WORK(d) = 3 d^2 + d doubles.  m and S double as the forward
 * storage (f_t, F_t^{-1}), so no T-sized scratch is needed.  Returns a
 * status (VB_OK, VB_NOT_PD when some F_t, hence Lambda, is not positive
 * definite, VB_LAPACK_ARG, VB_INTERRUPTED, VB_BAD_INPUT) and never raises
 * an R error.  Cost O(T d^3) time, O(T d^2) memory (the outputs).
 */
#include "vbayes.h"

/* interrupts are polled every BTD_POLL steps (vb_interrupted() is itself throttled) */
#define BTD_POLL 64

static void gemm(const char *ta, const char *tb, int d, double alpha, const double *X,
                 const double *Y, double beta, double *Z) {
    F77_CALL(dgemm)(ta, tb, &d, &d, &d, &alpha, X, &d, Y, &d, &beta, Z, &d FCONE FCONE);
}

static void gemv(int d, double alpha, const double *X, const double *x, double beta, double *y) {
    int one = 1;
    F77_CALL(dgemv)("N", &d, &d, &alpha, X, &d, x, &one, &beta, y, &one FCONE);
}

/* F -> F^{-1} in place, *ld = log|F|; a status. */
static int spd_inv(int d, double *F, double *ld) {
    int info = vb_chol(d, F, d);
    if (info) return vb_lapack_status(info);
    *ld = vb_chol_logdet(d, F, d);
    return vb_lapack_status(vb_chol_inv(d, F, d));
}

int vb_btd_solve(int T, int d, const double *D, const double *L, size_t lstride, const double *b,
                 double *m, double *S, double *Sc, double *logdet, double *work) {
    if (T < 1 || d < 1) return VB_BAD_INPUT;
    size_t dd = (size_t)d * d;
    double *K = work, *G = work + dd, *H = work + 2 * dd, *v = work + 3 * dd;
    double ld = 0.0, ldF = 0.0;
    int st;
    for (int t = 0; t < T; t++) {
        double *F = S + (size_t)t * dd, *f = m + (size_t)t * d;
        memcpy(F, D + (size_t)t * dd, dd * sizeof(double));
        memcpy(f, b + (size_t)t * d, (size_t)d * sizeof(double));
        if (t > 0) {
            const double *Lt = L + (size_t)t * lstride, *Fp = S + (size_t)(t - 1) * dd;
            gemm("N", "N", d, 1.0, Lt, Fp, 0.0, K); /* K = L_t F_{t-1}^{-1} */
            gemm("N", "T", d, -1.0, K, Lt, 1.0, F); /* F_t = D_t - K L_t'   */
            gemv(d, -1.0, K, m + (size_t)(t - 1) * d, 1.0, f);
            vb_symmetrize(d, F);
        }
        if ((st = spd_inv(d, F, &ldF)) != VB_OK) return st;
        ld += ldF;
        if (t % BTD_POLL == BTD_POLL - 1 && vb_interrupted()) return VB_INTERRUPTED;
    }
    double *f = m + (size_t)(T - 1) * d;
    gemv(d, 1.0, S + (size_t)(T - 1) * dd, f, 0.0, v);
    memcpy(f, v, (size_t)d * sizeof(double));
    memset(Sc, 0, dd * sizeof(double));
    for (int t = T - 2; t >= 0; t--) {
        double *Fi = S + (size_t)t * dd, *ft = m + (size_t)t * d, *Sct = Sc + (size_t)(t + 1) * dd;
        const double *Ln = L + (size_t)(t + 1) * lstride, *Sn = S + (size_t)(t + 1) * dd;
        gemm("N", "T", d, -1.0, Fi, Ln, 0.0, G); /* G_t = -F_t^{-1} L_{t+1}' */
        gemv(d, 1.0, Fi, ft, 0.0, v);
        gemv(d, 1.0, G, m + (size_t)(t + 1) * d, 1.0, v);
        memcpy(ft, v, (size_t)d * sizeof(double));
        gemm("N", "T", d, 1.0, Sn, G, 0.0, Sct); /* Sigma_{t+1,t} = S_{t+1} G_t' */
        gemm("N", "N", d, 1.0, G, Sct, 0.0, H);  /* G_t S_{t+1} G_t'            */
        for (size_t k = 0; k < dd; k++)
            Fi[k] += H[k];
        vb_symmetrize(d, Fi);
        if (t % BTD_POLL == 0 && vb_interrupted()) return VB_INTERRUPTED;
    }
    *logdet = -ld;
    return VB_OK;
}

/*
 * C_btd_solve(D, L, b): the solver from R (tests, and engines written in R).
 * D d x d x T; L d x d (constant) or d x d x T (per step, L[, , 1] unused);
 * b d x T.  Returns list(m, S, Sc, logdet, status); status VB_NOT_PD when
 * Lambda is not positive definite (the moments are then not meaningful).
 */
SEXP C_btd_solve(SEXP D, SEXP L, SEXP b) {
    SEXP dim = Rf_getAttrib(D, R_DimSymbol);
    if (TYPEOF(D) != REALSXP || TYPEOF(dim) != INTSXP || XLENGTH(dim) != 3 ||
        INTEGER(dim)[0] != INTEGER(dim)[1] || INTEGER(dim)[0] < 1 || INTEGER(dim)[2] < 1)
        Rf_error("btd: 'D' must be a double array d x d x T with d, T >= 1");
    int d = INTEGER(dim)[0], T = INTEGER(dim)[2], np = 0;
    size_t dd = (size_t)d * d;
    if (TYPEOF(L) != REALSXP || (XLENGTH(L) != (R_xlen_t)dd && XLENGTH(L) != (R_xlen_t)(dd * T)))
        Rf_error("btd: 'L' must be a double d x d matrix or d x d x T array");
    if (TYPEOF(b) != REALSXP || XLENGTH(b) != (R_xlen_t)d * T)
        Rf_error("btd: 'b' must be a double d x T matrix");
    size_t lstride = XLENGTH(L) == (R_xlen_t)dd ? 0 : dd;
    const double *pD = REAL(D), *pL = REAL(L), *pb = REAL(b);
    for (R_xlen_t k = 0; k < XLENGTH(D); k++)
        if (!R_FINITE(pD[k])) Rf_error("btd: 'D' must be finite");
    for (R_xlen_t k = 0; k < XLENGTH(L); k++)
        if (!R_FINITE(pL[k])) Rf_error("btd: 'L' must be finite");
    for (R_xlen_t k = 0; k < XLENGTH(b); k++)
        if (!R_FINITE(pb[k])) Rf_error("btd: 'b' must be finite");
    const char *nms[] = {"m", "S", "Sc", "logdet", "status", ""};
    SEXP out = vb_named_list(nms, &np);
    SEXP m = Rf_allocMatrix(REALSXP, d, T);
    SET_VECTOR_ELT(out, 0, m);
    SEXP S = Rf_allocVector(REALSXP, (R_xlen_t)(dd * T));
    SET_VECTOR_ELT(out, 1, S);
    SEXP Sc = Rf_allocVector(REALSXP, (R_xlen_t)(dd * T));
    SET_VECTOR_ELT(out, 2, Sc);
    Rf_setAttrib(S, R_DimSymbol, dim);
    Rf_setAttrib(Sc, R_DimSymbol, dim);
    double logdet = NA_REAL, *work = (double *)R_alloc(VB_BTD_WORK(d), sizeof(double));
    int status = vb_btd_solve(T, d, pD, pL, lstride, pb, REAL(m), REAL(S), REAL(Sc), &logdet, work);
    SET_VECTOR_ELT(out, 3, Rf_ScalarReal(status == VB_OK ? logdet : NA_REAL));
    SET_VECTOR_ELT(out, 4, Rf_ScalarInteger(status));
    UNPROTECT(np);
    return out;
}
