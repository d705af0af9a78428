/*
 * lds_estep.c — the .Call entry point of the LDS E-steps (lds_structured.c,
 * lds_block.c, lds_meanfield.c): unpack and check, allocate, start q, call
 * the worker, return its status as data.  One static helper per family
 * unpacks its state and starts its q.
 *
 * C_lds_estep(y, off, family, params, state, approx, control)
 *   y T x N double (NaN = missing); off T (log exposure); family VB_GAUSSIAN
 *   or VB_POISSON (integer); params list(A, Q, C, d, R, m0, V0);
 *   approx 0 structured (state NULL = start at the prior, or list(D d x d x T,
 *   L d x d, b d x T), the natural parameters of q) or 1 meanfield (state NULL
 *   = the prior's diagonal blocks at the prior mean path, or list(m, S)) or
 *   2 block (state list(starts = the run starts, integer, 0-based, first 0)
 *   to start at the prior mean path, plus D, Ls (d x d x T) and b (d x T),
 *   the runs' natural parameters, to continue from a q);
 *   control the named vb_control() list (maxit: fixed-point iterations,
 *   meanfield iterations or block sweeps; tol; quiet; joint_means: 0 for
 *   plain meanfield coordinate sweeps, else meanfield joint steps).
 * Returns list(m, S, Sc, logdet, D, L, b (structured; block: D, L = Ls, b;
 *   NULL for meanfield), elbo, loglik, iterations, passes, status,
 *   converged = status == VB_OK, trace (meanfield: the ELBO after each
 *   iteration; NULL otherwise)).  A Q or V0 that is not positive definite
 *   (e.g. left by an M-step) is status VB_NOT_PD with elbo NA.  Cost: see
 *   the workers.
 */
#include "lds.h"

/* x (fresh, unprotected) with a dim attribute; x is protected while dim is allocated */
static SEXP dims(SEXP x, int a, int b, int c) {
    PROTECT(x);
    SEXP dim = PROTECT(Rf_allocVector(INTSXP, c > 0 ? 3 : 2));
    INTEGER(dim)[0] = a;
    INTEGER(dim)[1] = b;
    if (c > 0) INTEGER(dim)[2] = c;
    Rf_setAttrib(x, R_DimSymbol, dim);
    UNPROTECT(2);
    return x;
}

static double *scratch(size_t n) {
    return (double *)R_alloc(n > 0 ? n : 1, sizeof(double));
}

/* What an E-step leaves besides the arrays of the result list. */
typedef struct {
    double logdet, elbo, loglik;
    int iter, passes;
} estep_res;

/* Copy a state element of known length; an R error names it if missing or malformed. */
static void state_copy(double *to, SEXP state, const char *name, size_t n) {
    memcpy(to, vb_real_elt(state, name, (R_xlen_t)n, "state"), n * sizeof(double));
}

static int estep_structured(const lds_model *M, SEXP state, const vb_settings *s, SEXP out,
                            double *work, estep_res *r) {
    int T = M->T, d = M->d, pois = M->family == VB_POISSON;
    size_t dd = (size_t)d * d, Td = (size_t)T * d, Tdd = (size_t)T * dd;
    SEXP m = VECTOR_ELT(out, 0), S = VECTOR_ELT(out, 1), Sc = VECTOR_ELT(out, 2);
    SEXP D = dims(Rf_allocVector(REALSXP, Tdd), d, d, T);
    SET_VECTOR_ELT(out, 4, D);
    SEXP L = dims(Rf_allocVector(REALSXP, dd), d, d, 0);
    SET_VECTOR_ELT(out, 5, L);
    SEXP b = dims(Rf_allocVector(REALSXP, Td), d, T, 0);
    SET_VECTOR_ELT(out, 6, b);
    lds_q cur = {REAL(D),
                 REAL(L),
                 REAL(b),
                 REAL(m),
                 REAL(S),
                 REAL(Sc),
                 pois ? scratch(Tdd) : NULL,
                 pois ? scratch(Td) : NULL,
                 0,
                 0,
                 0};
    lds_q try_ = cur;
    if (pois) {
        try_ = (lds_q){scratch(Tdd),
                       scratch(dd),
                       scratch(Td),
                       scratch(Td),
                       scratch(Tdd),
                       scratch(Tdd),
                       scratch(Tdd),
                       scratch(Td),
                       0,
                       0,
                       0};
        if (Rf_isNull(state))
            lds_q_prior(M, &cur);
        else {
            state_copy(cur.D, state, "D", Tdd);
            state_copy(cur.L, state, "L", dd);
            state_copy(cur.b, state, "b", Td);
        }
    }
    int status = lds_estep_structured(M, &cur, &try_, s->maxit, s->tol, &r->iter, &r->passes, work);
    if (cur.D != REAL(D)) { /* the last swap left the result in the scratch q */
        memcpy(REAL(D), cur.D, Tdd * sizeof(double));
        memcpy(REAL(L), cur.L, dd * sizeof(double));
        memcpy(REAL(b), cur.b, Td * sizeof(double));
        memcpy(REAL(m), cur.m, Td * sizeof(double));
        memcpy(REAL(S), cur.S, Tdd * sizeof(double));
        memcpy(REAL(Sc), cur.Sc, Tdd * sizeof(double));
    }
    r->logdet = cur.logdet;
    r->elbo = cur.elbo;
    r->loglik = cur.loglik;
    return status;
}

static int estep_block(const lds_model *M, SEXP state, const vb_settings *s, SEXP out,
                       estep_res *r) {
    int T = M->T, d = M->d, status = VB_OK;
    size_t dd = (size_t)d * d, Td = (size_t)T * d, Tdd = (size_t)T * dd;
    double *m = REAL(VECTOR_ELT(out, 0)), *S = REAL(VECTOR_ELT(out, 1)),
           *Sc = REAL(VECTOR_ELT(out, 2));
    if (TYPEOF(state) != VECSXP) Rf_error("lds: the block family needs state = list(starts = )");
    SEXP st0 = vb_elt_req(state, "starts", "state");
    if (TYPEOF(st0) != INTSXP || XLENGTH(st0) < 1 || XLENGTH(st0) > T)
        Rf_error("lds: 'starts' must be an integer vector of run starts, at most one per step");
    int nb = (int)XLENGTH(st0), *s0 = INTEGER(st0), Lmax = 0;
    int *sb = (int *)R_alloc((size_t)nb + 1, sizeof(int));
    for (int k = 0; k < nb; k++) {
        if (s0[k] == NA_INTEGER || s0[k] >= T || (k == 0 ? s0[k] != 0 : s0[k] <= s0[k - 1]))
            Rf_error("lds: 'starts' must increase from 0 and stay below T");
        sb[k] = s0[k];
    }
    sb[nb] = T;
    for (int k = 0; k < nb; k++)
        if (sb[k + 1] - sb[k] > Lmax) Lmax = sb[k + 1] - sb[k];
    SEXP Dx = dims(Rf_allocVector(REALSXP, Tdd), d, d, T);
    SET_VECTOR_ELT(out, 4, Dx);
    SEXP Lx = dims(Rf_allocVector(REALSXP, Tdd), d, d, T);
    SET_VECTOR_ELT(out, 5, Lx);
    SEXP bx = dims(Rf_allocVector(REALSXP, Td), d, T, 0);
    SET_VECTOR_ELT(out, 6, bx);
    double *D = REAL(Dx), *Ls = REAL(Lx), *b = REAL(bx);
    double *ld = scratch(nb), *bw = scratch(VB_BTD_WORK(d)),
           *wk = scratch(LDS_BLOCK_WORK(M->N, d, Lmax));
    if (!Rf_isNull(vb_elt(state, "D"))) { /* continue from a q */
        state_copy(D, state, "D", Tdd);
        state_copy(Ls, state, "Ls", Tdd);
        state_copy(b, state, "b", Td);
    } else { /* the prior restricted to each run, at the prior mean path */
        double *mp = scratch(Td);
        for (int t = 0; t < T; t++) {
            if (t == 0)
                memcpy(mp, M->m0, (size_t)d * sizeof(double));
            else
                lds_gemv("N", d, d, 1.0, M->A, mp + (size_t)(t - 1) * d, 0.0, mp + (size_t)t * d);
        }
        int k = 0;
        for (int t = 0; t < T; t++) {
            if (k + 1 < nb && t == sb[k + 1]) k++;
            int first = t == sb[k], last = t == sb[k + 1] - 1;
            double *Dt = D + t * dd, *Lt = Ls + t * dd, *bt = b + (size_t)t * d;
            lds_prior_diag(M, t, Dt);
            for (size_t q = 0; q < dd; q++)
                Lt[q] = first ? 0.0 : -M->QiA[q];
            lds_gemv("N", d, d, 1.0, Dt, mp + (size_t)t * d, 0.0, bt); /* b = Lambda_k m */
            if (!first) lds_gemv("N", d, d, 1.0, Lt, mp + (size_t)(t - 1) * d, 1.0, bt);
            if (!last) lds_gemv("T", d, d, -1.0, M->QiA, mp + (size_t)(t + 1) * d, 1.0, bt);
        }
    }
    for (int k = 0; k < nb && status == VB_OK; k++) {
        size_t o1 = (size_t)sb[k] * d, o2 = (size_t)sb[k] * dd;
        status = vb_btd_solve(sb[k + 1] - sb[k], d, D + o2, Ls + o2, dd, b + o1, m + o1, S + o2,
                              Sc + o2, &ld[k], bw);
    }
    if (status == VB_OK)
        status = lds_estep_block(M, nb, sb, D, Ls, b, m, S, Sc, ld, s->maxit, s->tol, &r->iter,
                                 &r->elbo, &r->loglik, wk);
    r->passes = r->iter;
    for (int k = 0; k < nb; k++)
        r->logdet += ld[k];
    return status;
}

static int estep_meanfield(const lds_model *M, SEXP state, const vb_settings *s, SEXP out,
                           double *work, estep_res *r) {
    int T = M->T, d = M->d, status = VB_OK;
    size_t dd = (size_t)d * d, Td = (size_t)T * d, Tdd = (size_t)T * dd;
    double *m = REAL(VECTOR_ELT(out, 0)), *S = REAL(VECTOR_ELT(out, 1)),
           *Sc = REAL(VECTOR_ELT(out, 2)), *ldS = scratch(T), *P = work;
    if (Rf_isNull(state)) {
        for (int t = 0; t < T && status == VB_OK; t++) {
            double *St = S + t * dd, *mt = m + (size_t)t * d;
            lds_prior_diag(M, t, P);
            memcpy(St, P, dd * sizeof(double));
            status = lds_spd_inverse(d, St, &ldS[t]);
            ldS[t] = -ldS[t];
            if (t == 0) /* start at the prior mean path */
                memcpy(mt, M->m0, (size_t)d * sizeof(double));
            else
                lds_gemv("N", d, d, 1.0, M->A, mt - d, 0.0, mt);
        }
    } else {
        state_copy(m, state, "m", Td);
        state_copy(S, state, "S", Tdd);
        for (int t = 0; t < T && status == VB_OK; t++) {
            memcpy(P, S + t * dd, dd * sizeof(double));
            status = vb_lapack_status(vb_chol(d, P, d));
            ldS[t] = status == VB_OK ? vb_chol_logdet(d, P, d) : 0.0;
        }
    }
    if (status != VB_OK) return status;
    vb_trace tr;
    vb_progress pr;
    vb_trace_init(&tr);
    vb_progress_init(&pr, s->quiet);
    lds_mf_opts o = {s->maxit, s->joint_max > 0, s->tol, NULL, &tr, &pr};
    if (o.joint) o.big = scratch(LDS_MF_JOINT_WORK(T, d));
    status =
        lds_estep_meanfield(M, m, S, ldS, Sc, &o, &r->iter, &r->passes, &r->elbo, &r->loglik, work);
    for (int t = 0; t < T; t++)
        r->logdet += ldS[t];
    SET_VECTOR_ELT(out, 13, vb_real_vec(tr.n, tr.x));
    return status;
}

SEXP C_lds_estep(SEXP y, SEXP off, SEXP family, SEXP params, SEXP state, SEXP approx,
                 SEXP control) {
    lds_model M;
    vb_settings s;
    lds_unpack(&M, y, off, family, params);
    if (TYPEOF(approx) != INTSXP || XLENGTH(approx) != 1 || INTEGER(approx)[0] < 0 ||
        INTEGER(approx)[0] > 2)
        Rf_error("lds: 'approx' must be 0L (structured), 1L (meanfield) or 2L (block)");
    vb_settings_read(control, &s);
    if (!Rf_isNull(state) && TYPEOF(state) != VECSXP)
        Rf_error("lds: 'state' must be NULL or a list");
    int ap = INTEGER(approx)[0], T = M.T, d = M.d, np = 0, status;
    size_t dd = (size_t)d * d, Td = (size_t)T * d, Tdd = (size_t)T * dd;
    const char *nms[] = {"m",      "S",      "Sc",        "logdet", "D",
                         "L",      "b",      "elbo",      "loglik", "iterations",
                         "passes", "status", "converged", "trace",  ""};
    SEXP out = vb_named_list(nms, &np);
    SEXP m = dims(Rf_allocVector(REALSXP, Td), d, T, 0);
    SET_VECTOR_ELT(out, 0, m);
    SEXP S = dims(Rf_allocVector(REALSXP, Tdd), d, d, T);
    SET_VECTOR_ELT(out, 1, S);
    SEXP Sc = dims(Rf_allocVector(REALSXP, Tdd), d, d, T);
    SET_VECTOR_ELT(out, 2, Sc);
    memset(REAL(m), 0, Td * sizeof(double));
    memset(REAL(S), 0, Tdd * sizeof(double));
    memset(REAL(Sc), 0, Tdd * sizeof(double));
    double *work = scratch(LDS_ESTEP_WORK(M.N, d));
    estep_res r = {0.0, NA_REAL, NA_REAL, 0, 0};

    status = lds_derive(&M);
    if (status == VB_OK) {
        if (ap == 0)
            status = estep_structured(&M, state, &s, out, work, &r);
        else if (ap == 2)
            status = estep_block(&M, state, &s, out, &r);
        else
            status = estep_meanfield(&M, state, &s, out, work, &r);
    }
    SET_VECTOR_ELT(out, 3, Rf_ScalarReal(r.logdet));
    SET_VECTOR_ELT(out, 7, Rf_ScalarReal(r.elbo));
    SET_VECTOR_ELT(out, 8, Rf_ScalarReal(r.loglik));
    SET_VECTOR_ELT(out, 9, Rf_ScalarInteger(r.iter));
    SET_VECTOR_ELT(out, 10, Rf_ScalarInteger(r.passes));
    SET_VECTOR_ELT(out, 11, Rf_ScalarInteger(status));
    SET_VECTOR_ELT(out, 12, Rf_ScalarLogical(status == VB_OK));
    UNPROTECT(np);
    return out;
}
