/*
 * lds_model.c — the latent linear dynamical system as a model (lds.h):
 * unpacking and checking its arguments, and the two parts of its ELBO under
 * a Gaussian q with moments m_t, Sigma_tt, Sigma_{t,t-1}:
 *
 *   ELBO = sum_t E log p(y_t | z_t) + E log p(z) + 1/2 log|Sigma| + Td/2 (1 + log 2 pi).
 *
 * Observation term (lds_obs_term): E log p(y_ti | z_t) under eta ~ N(m, v),
 * m = c_i'm_t + d_i (+ off_t), v = c_i'Sigma_tt c_i, by the toolkit's
 * vb_egauss / vb_epois (expect.c); lgamma(y + 1) is added once (lgy).  With
 * J != NULL it also writes the natural-gradient pseudo-observations of
 * z_t, J_t = -2 C' diag(df/dv) C and h_t = J_t m_t + C' df/dm (for the
 * gaussian exact: J_t = C'R^{-1}C, h_t = C'R^{-1}(y_t - d)).  Work
 * LDS_OBS_WORK(N, d) doubles; cost O(N d^2) (O(N d) for a fully observed
 * gaussian bin, whose J_t is the constant C'R^{-1}C).
 *
 * Latent term (lds_latent_term): E log p(z) + entropy from m, Sigma_tt and
 * Sigma_{t,t-1}, O(T d^2).  Cost of lds_derive: O(d^3 + T N).
 */
#include "lds.h"

void lds_prior_diag(const lds_model *M, int t, double *D) {
    size_t dd = (size_t)M->d * M->d;
    for (size_t k = 0; k < dd; k++)
        D[k] = (t == 0 ? M->V0i[k] : M->Qi[k]) + (t < M->T - 1 ? M->AtQiA[k] : 0.0);
}

double lds_obs_term(const lds_model *M, int t, const double *m, const double *S, double *J,
                    double *h, double *work) {
    int N = M->N, d = M->d, T = M->T, gauss = M->family == VB_GAUSSIAN;
    double *CS = work, *eta = work + (size_t)N * d, *wt = eta + N, *r = wt + N,
           *wk = r + N; /* wk: N d for vb_xtwx */
    double val = 0.0, dm, dv;
    for (int i = 0; i < N; i++)
        eta[i] = M->dv[i] + (gauss ? 0.0 : M->off[t]);
    lds_gemv("N", N, d, 1.0, M->C, m, 1.0, eta);
    if (gauss && M->rowobs[t]) {
        /* E log p is linear in v with slope df/dv = -1/(2 R_i), so the variance
         * terms sum to -<C'R^{-1}C, Sigma_tt>/2, and J_t is that constant matrix */
        for (int i = 0; i < N; i++) {
            double ri = 1.0 / M->R[i];
            val +=
                vb_egauss(M->y[t + (size_t)i * T], 1.0, ri, -log(M->R[i]), eta[i], 0.0, &dm, &dv) -
                0.5 * VB_LOG2PI;
            r[i] = dm;
        }
        val -= 0.5 * lds_dot((size_t)d * d, M->Jg, S);
        if (J) {
            memcpy(J, M->Jg, (size_t)d * d * sizeof(double));
            lds_gemv("N", d, d, 1.0, J, m, 0.0, h);
            lds_gemv("T", N, d, 1.0, M->C, r, 1.0, h);
        }
        return val;
    }
    F77_CALL(dsymm)
    ("R", "U", &N, &d, &(double){1.0}, S, &d, M->C, &N, &(double){0.0}, CS, &N FCONE FCONE);
    for (int i = 0; i < N; i++) {
        double yi = M->y[t + (size_t)i * T], vi = 0.0;
        for (int k = 0; k < d; k++)
            vi += CS[i + (size_t)k * N] * M->C[i + (size_t)k * N];
        if (ISNAN(yi)) {
            wt[i] = r[i] = 0.0;
            continue;
        }
        if (gauss)
            val +=
                vb_egauss(yi, 1.0, M->Rinv[i], -M->logR[i], eta[i], vi, &dm, &dv) - 0.5 * VB_LOG2PI;
        else
            val += vb_epois(yi, 1.0, eta[i], vi, &dm, &dv);
        wt[i] = -2.0 * dv;
        r[i] = dm;
    }
    if (J) {
        vb_xtwx(N, d, M->C, N, wt, wk, J);
        lds_gemv("N", d, d, 1.0, J, m, 0.0, h);
        lds_gemv("T", N, d, 1.0, M->C, r, 1.0, h);
    }
    return val;
}

double lds_obs_total(const lds_model *M, const double *m, const double *S, double *work) {
    size_t d = M->d, dd = d * d;
    double val = 0.0;
    for (int t = 0; t < M->T; t++)
        val += lds_obs_term(M, t, m + t * d, S + t * dd, NULL, NULL, work);
    return val - M->lgy;
}

double lds_latent_term(const lds_model *M, const double *m, const double *S, const double *Sc,
                       double logdet, double *work) {
    int d = M->d, T = M->T;
    size_t dd = (size_t)d * d;
    double *e = work, *u = work + d, val = 0.0;
    for (int t = 0; t < T; t++) {
        const double *mt = m + (size_t)t * d, *St = S + (size_t)t * dd;
        double q;
        if (t == 0) {
            for (int k = 0; k < d; k++)
                e[k] = mt[k] - M->m0[k];
            lds_gemv("N", d, d, 1.0, M->V0i, e, 0.0, u);
            q = lds_dot(d, e, u) + lds_dot(dd, M->V0i, St) + M->ldV0;
        } else {
            memcpy(e, mt, (size_t)d * sizeof(double));
            lds_gemv("N", d, d, -1.0, M->A, m + (size_t)(t - 1) * d, 1.0, e);
            lds_gemv("N", d, d, 1.0, M->Qi, e, 0.0, u);
            q = lds_dot(d, e, u) + lds_dot(dd, M->Qi, St) -
                2.0 * lds_dot(dd, M->QiA, Sc + (size_t)t * dd) +
                lds_dot(dd, M->AtQiA, S + (size_t)(t - 1) * dd) + M->ldQ;
        }
        val += -0.5 * (q + d * VB_LOG2PI);
    }
    return val + 0.5 * logdet + 0.5 * T * d * (1.0 + VB_LOG2PI);
}

/* ------------------------------------------------ the R boundary -- */

/* Unpack y (T x N), off (T), the family code and the params list; R errors
 * for anything malformed (the values were checked in R/lds.R). */
void lds_unpack(lds_model *M, SEXP y, SEXP off, SEXP family, SEXP params) {
    const char *w = "params";
    if (TYPEOF(y) != REALSXP || !Rf_isMatrix(y)) Rf_error("lds: 'y' must be a double matrix");
    if (TYPEOF(params) != VECSXP) Rf_error("lds: 'params' must be a list");
    if (TYPEOF(family) != INTSXP || XLENGTH(family) != 1 ||
        (INTEGER(family)[0] != VB_GAUSSIAN && INTEGER(family)[0] != VB_POISSON))
        Rf_error("lds: 'family' must be the code of gaussian (%d) or poisson (%d)", VB_GAUSSIAN,
                 VB_POISSON);
    M->family = INTEGER(family)[0];
    M->T = Rf_nrows(y);
    M->N = Rf_ncols(y);
    if (M->T < 1 || M->N < 1) Rf_error("lds: 'y' has no rows or columns");
    if (TYPEOF(off) != REALSXP || XLENGTH(off) != M->T)
        Rf_error("lds: 'off' must be a double vector with one entry per time bin");
    SEXP Am = vb_elt(params, "A");
    if (TYPEOF(Am) != REALSXP || !Rf_isMatrix(Am) || Rf_nrows(Am) != Rf_ncols(Am) ||
        Rf_nrows(Am) < 1)
        Rf_error("lds: params$A must be a square double matrix");
    int d = M->d = Rf_nrows(Am), N = M->N;
    R_xlen_t dd = (R_xlen_t)d * d;
    M->y = REAL(y);
    M->off = REAL(off);
    M->A = REAL(Am);
    M->Q = vb_real_elt(params, "Q", dd, w);
    M->C = vb_real_elt(params, "C", (R_xlen_t)N * d, w);
    M->dv = vb_real_elt(params, "d", N, w);
    M->R = vb_real_elt(params, "R", N, w);
    M->m0 = vb_real_elt(params, "m0", d, w);
    M->V0 = vb_real_elt(params, "V0", dd, w);
    for (R_xlen_t k = 0; k < dd; k++)
        if (!R_FINITE(M->A[k]) || !R_FINITE(M->Q[k]) || !R_FINITE(M->V0[k]))
            Rf_error("lds: params$A, Q and V0 must be finite");
    for (R_xlen_t k = 0; k < (R_xlen_t)N * d; k++)
        if (!R_FINITE(M->C[k])) Rf_error("lds: params$C must be finite");
    for (int i = 0; i < N; i++)
        if (!R_FINITE(M->dv[i]) ||
            (M->family == VB_GAUSSIAN && !(M->R[i] > 0.0 && R_FINITE(M->R[i]))))
            Rf_error("lds: params$d must be finite and params$R positive");
    for (int k = 0; k < d; k++)
        if (!R_FINITE(M->m0[k])) Rf_error("lds: params$m0 must be finite");
    for (int t = 0; t < M->T; t++)
        if (!R_FINITE(M->off[t])) Rf_error("lds: the log exposure 'off' must be finite");
    M->lgy = 0.0;
    for (R_xlen_t k = 0; k < (R_xlen_t)M->T * N; k++) {
        double v = M->y[k];
        if (ISNAN(v)) continue;
        if (!R_FINITE(v)) Rf_error("lds: 'y' must be finite (NA for missing)");
        if (M->family == VB_POISSON) {
            if (v < 0 || v != floor(v)) Rf_error("lds: poisson counts must be whole numbers >= 0");
            M->lgy += lgammafn(v + 1.0);
        }
    }
}

int lds_derive(lds_model *M) {
    int d = M->d, N = M->N, st;
    size_t dd = (size_t)d * d;
    M->Qi = (double *)R_alloc(dd, sizeof(double));
    M->V0i = (double *)R_alloc(dd, sizeof(double));
    M->QiA = (double *)R_alloc(dd, sizeof(double));
    M->AtQiA = (double *)R_alloc(dd, sizeof(double));
    M->V0im0 = (double *)R_alloc(d, sizeof(double));
    M->Jg = (double *)R_alloc(dd, sizeof(double));
    M->rowobs = (int *)R_alloc(M->T, sizeof(int));
    memcpy(M->Qi, M->Q, dd * sizeof(double));
    if ((st = lds_spd_inverse(d, M->Qi, &M->ldQ)) != VB_OK) return st;
    memcpy(M->V0i, M->V0, dd * sizeof(double));
    if ((st = lds_spd_inverse(d, M->V0i, &M->ldV0)) != VB_OK) return st;
    lds_gemm("N", "N", d, d, d, 1.0, M->Qi, d, M->A, d, 0.0, M->QiA, d);
    lds_gemm("T", "N", d, d, d, 1.0, M->A, d, M->QiA, d, 0.0, M->AtQiA, d);
    vb_symmetrize(d, M->AtQiA);
    lds_gemv("N", d, d, 1.0, M->V0i, M->m0, 0.0, M->V0im0);
    for (int t = 0; t < M->T; t++) {
        int all = 1;
        for (int i = 0; i < N && all; i++)
            if (ISNAN(M->y[t + (size_t)i * M->T])) all = 0;
        M->rowobs[t] = all;
    }
    memset(M->Jg, 0, dd * sizeof(double));
    M->Rinv = (double *)R_alloc(N, sizeof(double));
    M->logR = (double *)R_alloc(N, sizeof(double));
    for (int i = 0; i < N; i++) {
        M->Rinv[i] = M->family == VB_GAUSSIAN ? 1.0 / M->R[i] : 0.0;
        M->logR[i] = M->family == VB_GAUSSIAN ? log(M->R[i]) : 0.0;
    }
    if (M->family == VB_GAUSSIAN) {
        double *wk = (double *)R_alloc((size_t)N * d, sizeof(double));
        vb_xtwx(N, d, M->C, N, M->Rinv, wk, M->Jg);
    }
    return VB_OK;
}
