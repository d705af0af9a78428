/*
 * lds_mstep.c — the Poisson M-step of the latent dynamical system for the
 * loadings and offsets (C, d), unit by unit.
 *
 * Model.  Under q, unit i's part of the ELBO is
 *   f(c, d) = sum_t o_ti [y_ti (c'm_t + d) - exp(off_t + d + c'm_t + c'S_t c / 2)]
 * (o_ti = 1 if observed), concave in (c, d).  Its gradient is
 * sum_t [y_t x_t - lam_t u_t], x_t = (m_t, 1), u_t = (m_t + S_t c, 1), and its
 * negative Hessian sum_t lam_t (u_t u_t' + blockdiag(S_t, 0)), accumulated in
 * one pass per unit with loops over the tiny latent dimension (a BLAS call
 * per time step would cost more than its d^2 flops).
 *
 * Update.  Newton steps, each searched by vb_step_search() (a = 1, 1/2, ...),
 * so f never decreases (generalised EM); at most maxit steps per unit, fewer
 * once vb_tol_met() holds for f.  A unit whose Newton matrix is not positive
 * definite is left unchanged and counted as VB_NOT_PD; a step search that
 * finds no ascent gives VB_STALLED (the unit keeps its last accepted value).
 * The worker returns the first such status over the units (VB_OK if none),
 * VB_NONFINITE if f is not finite at the start, VB_INTERRUPTED.
 *
 * C_lds_poisson_mstep(y, off, m, S, C, d, control): y Ttot x N (trials
 * stacked, NaN = missing), off Ttot, m d x Ttot, S d x d x Ttot, C N x d and
 * d N (the current values), control a named list with maxit (Newton steps
 * per unit) and tol.  Returns list(C, d, status).  Work O(d^2); cost
 * O(Ttot d^2) per unit and step.
 */
#include "lds.h"

typedef struct {
    int T, d;
    const double *y, *off, *m, *S, *c, *g; /* g: the Newton direction (d + 1) */
    double di, *cn;
} unit_ctx;

static double unit_obj(int T, int d, const double *y, const double *off, const double *m,
                       const double *S, const double *c, double di) {
    double f = 0.0;
    size_t dd = (size_t)d * d;
    for (int t = 0; t < T; t++) {
        if (ISNAN(y[t])) continue;
        const double *mt = m + (size_t)t * d, *St = S + t * dd;
        double q = 0.0, dm, dv;
        for (int b = 0; b < d; b++) {
            double s = 0.0;
            for (int a = 0; a < d; a++)
                s += St[a + b * d] * c[a];
            q += s * c[b];
        }
        f += vb_epois(y[t], 1.0, off[t] + di + lds_dot(d, c, mt), q, &dm, &dv);
    }
    return f;
}

static int unit_try(double a, void *ctx_, double *value) {
    unit_ctx *u = (unit_ctx *)ctx_;
    for (int k = 0; k < u->d; k++)
        u->cn[k] = u->c[k] + a * u->g[k];
    u->cn[u->d] = u->di + a * u->g[u->d];
    *value = unit_obj(u->T, u->d, u->y, u->off, u->m, u->S, u->cn, u->cn[u->d]);
    return VB_OK;
}

static int pois_mstep(int T, int N, int d, const double *Y, const double *O, const double *Mm,
                      const double *SS, int maxit, double tol, double *C, double *dvec,
                      double *work) {
    int p = d + 1, status = VB_OK;
    size_t dd = (size_t)d * d;
    double *c = work, *cn = c + p, *u = cn + p, *g = u + p, *H = g + p;
    for (int i = 0; i < N; i++) {
        const double *yi = Y + (size_t)i * T;
        for (int k = 0; k < d; k++)
            c[k] = C[i + (size_t)k * N];
        double di = dvec[i], f = unit_obj(T, d, yi, O, Mm, SS, c, di);
        if (!R_FINITE(f)) return VB_NONFINITE;
        for (int it = 0; it < maxit; it++) {
            if (vb_interrupted()) return VB_INTERRUPTED;
            memset(g, 0, (size_t)p * sizeof(double));
            memset(H, 0, (size_t)p * p * sizeof(double));
            for (int t = 0; t < T; t++) {
                if (ISNAN(yi[t])) continue;
                const double *mt = Mm + (size_t)t * d, *St = SS + t * dd;
                double q = 0.0, e = O[t] + di;
                for (int b = 0; b < d; b++) {
                    double s = 0.0;
                    for (int a = 0; a < d; a++)
                        s += St[a + b * d] * c[a];
                    u[b] = s;
                    q += s * c[b];
                    e += c[b] * mt[b];
                }
                double lam = exp(e + 0.5 * q);
                for (int k = 0; k < d; k++)
                    u[k] += mt[k]; /* m_t + S_t c */
                u[d] = 1.0;
                for (int k = 0; k < d; k++)
                    g[k] += yi[t] * mt[k] - lam * u[k];
                g[d] += yi[t] - lam;
                for (int b = 0; b < p; b++) {
                    double lb = lam * u[b];
                    for (int a = 0; a <= b; a++)
                        H[a + b * p] += lb * u[a];
                }
                for (int b = 0; b < d; b++)
                    for (int a = 0; a <= b; a++)
                        H[a + b * p] += lam * St[a + b * d];
            }
            int st = vb_lapack_status(vb_chol(p, H, p));
            if (st != VB_OK) { /* no information on this unit: leave it */
                if (status == VB_OK) status = st;
                break;
            }
            vb_chol_solve(p, H, p, g);
            unit_ctx ctx = {T, d, yi, O, Mm, SS, c, g, di, cn};
            double a, fn;
            st = vb_step_search(unit_try, &ctx, f, &a, &fn);
            if (st == VB_INTERRUPTED) return st;
            if (st != VB_OK) {
                if (status == VB_OK) status = st;
                break;
            }
            memcpy(c, cn, (size_t)d * sizeof(double));
            di = cn[d];
            double old = f;
            f = fn;
            if (vb_tol_met(old, f, tol)) break;
        }
        for (int k = 0; k < d; k++)
            C[i + (size_t)k * N] = c[k];
        dvec[i] = di;
    }
    return status;
}

SEXP C_lds_poisson_mstep(SEXP y, SEXP off, SEXP m, SEXP S, SEXP C, SEXP dvec, SEXP control) {
    if (TYPEOF(y) != REALSXP || !Rf_isMatrix(y)) Rf_error("lds: 'y' must be a double matrix");
    int T = Rf_nrows(y), N = Rf_ncols(y), np = 0;
    if (TYPEOF(C) != REALSXP || !Rf_isMatrix(C) || Rf_nrows(C) != N || Rf_ncols(C) < 1)
        Rf_error("lds: 'C' must be a double matrix with one row per unit");
    int d = Rf_ncols(C);
    size_t dd = (size_t)d * d;
    if (TYPEOF(off) != REALSXP || XLENGTH(off) != T) Rf_error("lds: bad 'off'");
    if (TYPEOF(m) != REALSXP || XLENGTH(m) != (R_xlen_t)d * T) Rf_error("lds: bad 'm'");
    if (TYPEOF(S) != REALSXP || XLENGTH(S) != (R_xlen_t)(dd * T)) Rf_error("lds: bad 'S'");
    if (TYPEOF(dvec) != REALSXP || XLENGTH(dvec) != N) Rf_error("lds: bad 'd'");
    int maxit = vb_int_elt(control, "maxit", 1, INT_MAX, "control");
    double tol = vb_num_elt(control, "tol", 0, R_PosInf, "control");
    const double *Y = REAL(y);
    for (R_xlen_t k = 0; k < (R_xlen_t)T * N; k++)
        if (!ISNAN(Y[k]) && !(Y[k] >= 0 && R_FINITE(Y[k])))
            Rf_error("lds: poisson counts must be finite and >= 0 (NA for missing)");
    for (R_xlen_t k = 0; k < XLENGTH(m); k++)
        if (!R_FINITE(REAL(m)[k])) Rf_error("lds: 'm' must be finite");
    for (R_xlen_t k = 0; k < XLENGTH(S); k++)
        if (!R_FINITE(REAL(S)[k])) Rf_error("lds: 'S' must be finite");
    for (int t = 0; t < T; t++)
        if (!R_FINITE(REAL(off)[t])) Rf_error("lds: 'off' must be finite");

    const char *nms[] = {"C", "d", "status", ""};
    SEXP out = vb_named_list(nms, &np);
    SEXP Cn = Rf_allocMatrix(REALSXP, N, d);
    SET_VECTOR_ELT(out, 0, Cn);
    SEXP dn = Rf_allocVector(REALSXP, N);
    SET_VECTOR_ELT(out, 1, dn);
    memcpy(REAL(Cn), REAL(C), (size_t)N * d * sizeof(double));
    memcpy(REAL(dn), REAL(dvec), (size_t)N * sizeof(double));
    double *work =
        (double *)R_alloc(4 * (size_t)(d + 1) + (size_t)(d + 1) * (d + 1), sizeof(double));
    int status =
        pois_mstep(T, N, d, Y, REAL(off), REAL(m), REAL(S), maxit, tol, REAL(Cn), REAL(dn), work);
    SET_VECTOR_ELT(out, 2, Rf_ScalarInteger(status));
    UNPROTECT(np);
    return out;
}
