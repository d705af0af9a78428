/*
 * sgvb_targets.c — the log joints the SGVB engine (sgvb.c) fits, each behind
 * the vb_log_joint contract (vbayes.h): f(theta, grad, model) returns
 * log p(y, theta) and, when grad != NULL, writes its gradient.
 *
 * Targets (model list -> vb_target):
 *   list(type = "glm", glm = <GLM model list>)   a GLM (glm.c's log joint):
 *       theta = beta, and log tau for gaussian; cost O(n p) per evaluation.
 *   list(type = "gauss", m = <d>, A = <d x d>)   f = -1/2 (theta - m)' A (theta - m),
 *       a test target whose optimal q and ELBO are known in closed form; O(d^2).
 *   list(type = "r", fn = <function(theta, grad)>, d = <int>)   a user's log density
 *       (vb_density()).  fn returns a double vector: c(f) or, when grad is TRUE and
 *       f is finite, c(f, gradient); or an error/interrupt condition, never an error
 *       itself (R/sgvb.R wraps the user's functions in tryCatch and checks their
 *       values there, where the messages are written).  The call is evaluated inside
 *       R_ToplevelExec, so even an R error that escapes the wrapper (e.g. memory)
 *       cannot longjmp through the engine: the target then sets its status, keeps
 *       the condition in holder[0], and the entry point restores the RNG and
 *       returns it to R, which re-raises it.
 *
 * For the GLM target also: C_sgvb_glm_start(model, theta0), the Laplace start
 * of vb(method = "sgvb") (chord Newton steps to the mode and the curvature
 * X'WX + prior precision there; one gradient per step, X'WX only after large
 * moves), and vb_glm_target_moments(), the closed-form ELBO of q(beta) with
 * the linear predictor's moments, which C_sgvb_fit returns on
 * opts$glm_moments (so the fit needs no Monte Carlo ELBO and no n x p
 * temporaries in R).
 */
#include "vbayes.h"

/* ---------------------------------------------------- Gaussian target -- */

typedef struct {
    int d;
    const double *m, *A;
    double *r; /* scratch, d */
} gauss_target;

static double gauss_log_joint(const double *theta, double *grad, void *model) {
    gauss_target *T = (gauss_target *)model;
    int d = T->d;
    double f = 0;
    for (int i = 0; i < d; i++)
        T->r[i] = theta[i] - T->m[i];
    for (int i = 0; i < d; i++) {
        double Ar = 0;
        for (int k = 0; k < d; k++)
            Ar += T->A[i + (size_t)k * d] * T->r[k];
        f -= 0.5 * T->r[i] * Ar;
        if (grad) grad[i] = -Ar;
    }
    return f;
}

/* ---------------------------------------------------- the R closure -- */

typedef struct {
    int d;
    SEXP fn;     /* function(theta, grad), protected by the caller's model list */
    SEXP holder; /* VECSXP: [0] the failure condition, [1] the last value     */
    const double *theta;
    int want_grad;
    int status;
} r_target;

/* Evaluated under R_ToplevelExec: any R error unwinds to it, not past the engine. */
static void r_eval(void *data) {
    r_target *T = (r_target *)data;
    SEXP th = PROTECT(Rf_allocVector(REALSXP, T->d));
    memcpy(REAL(th), T->theta, sizeof(double) * T->d);
    SEXP g = PROTECT(Rf_ScalarLogical(T->want_grad));
    SEXP call = PROTECT(Rf_lang3(T->fn, th, g));
    SET_VECTOR_ELT(T->holder, 1, Rf_eval(call, R_GlobalEnv));
    UNPROTECT(3);
}

static int inherits(SEXP x, const char *cls) {
    SEXP k = Rf_getAttrib(x, R_ClassSymbol);
    if (TYPEOF(k) != STRSXP) return 0;
    for (R_xlen_t i = 0; i < Rf_xlength(k); i++)
        if (strcmp(CHAR(STRING_ELT(k, i)), cls) == 0) return 1;
    return 0;
}

static double r_log_joint(const double *theta, double *grad, void *model) {
    r_target *T = (r_target *)model;
    int d = T->d;
    if (T->status != VB_OK) return R_NaN;
    T->theta = theta;
    T->want_grad = grad != NULL;
    SET_VECTOR_ELT(T->holder, 1, R_NilValue);
    if (!R_ToplevelExec(r_eval, T)) {
        /* an error the R wrapper did not catch (its message was printed) */
        T->status = VB_BAD_INPUT;
        return R_NaN;
    }
    SEXP v = VECTOR_ELT(T->holder, 1);
    if (inherits(v, "condition")) {
        SET_VECTOR_ELT(T->holder, 0, v);
        T->status = inherits(v, "interrupt") ? VB_INTERRUPTED : VB_BAD_INPUT;
        return R_NaN;
    }
    R_xlen_t len = Rf_xlength(v);
    if (TYPEOF(v) != REALSXP || (len != 1 && (!grad || len != 1 + (R_xlen_t)d))) {
        T->status = VB_BAD_INPUT; /* the wrapper's contract was broken */
        return R_NaN;
    }
    double f = REAL(v)[0];
    if (grad) {
        if (len == 1 + (R_xlen_t)d)
            memcpy(grad, REAL(v) + 1, sizeof(double) * d);
        else /* f non-finite: no gradient, the engine skips the draw */
            for (int i = 0; i < d; i++)
                grad[i] = R_NaN;
        if (len == 1 && R_FINITE(f)) {
            T->status = VB_BAD_INPUT;
            return R_NaN;
        }
    }
    return f;
}

/* --------------------------------------------------------- GLM target -- */

static void glm_setup(SEXP model, vb_target *T) {
    vb_glm *M = (vb_glm *)R_alloc(1, sizeof(vb_glm));
    vb_glm_unpack(vb_elt_req(model, "glm", "model"), M);
    M->eta = (double *)R_alloc((size_t)M->n + 1, sizeof(double));
    T->d = M->p + (M->family == VB_GAUSSIAN);
    if (T->d < 1) Rf_error("the SGVB GLM target needs at least one parameter");
    T->f = vb_glm_log_joint;
    T->model = M;
}

static void gauss_setup(SEXP model, vb_target *T) {
    SEXP m = vb_elt_req(model, "m", "model");
    if (TYPEOF(m) != REALSXP || Rf_xlength(m) < 1 || Rf_xlength(m) > 10000)
        Rf_error("the gauss target needs a double vector 'm' of length 1 to 10000");
    int d = (int)Rf_xlength(m);
    gauss_target *G = (gauss_target *)R_alloc(1, sizeof(gauss_target));
    G->d = d;
    G->m = REAL(m);
    G->A = vb_real_elt(model, "A", (R_xlen_t)d * d, "model");
    for (int i = 0; i < d; i++)
        if (!R_FINITE(G->m[i])) Rf_error("the gauss target's 'm' must be finite");
    for (R_xlen_t k = 0; k < (R_xlen_t)d * d; k++)
        if (!R_FINITE(G->A[k])) Rf_error("the gauss target's 'A' must be finite");
    G->r = (double *)R_alloc(d, sizeof(double));
    T->d = d;
    T->f = gauss_log_joint;
    T->model = G;
}

static void r_setup(SEXP model, SEXP holder, vb_target *T) {
    SEXP fn = vb_elt_req(model, "fn", "model");
    if (!Rf_isFunction(fn)) Rf_error("the r target's 'fn' must be a function(theta, grad)");
    if (TYPEOF(holder) != VECSXP || Rf_xlength(holder) != 2)
        Rf_error("internal error: the r target needs a holder list of length 2");
    r_target *R = (r_target *)R_alloc(1, sizeof(r_target));
    R->d = vb_int_elt(model, "d", 1, 100000, "model");
    R->fn = fn;
    R->holder = holder;
    R->status = VB_OK;
    T->d = R->d;
    T->f = r_log_joint;
    T->model = R;
    T->status = &R->status;
}

void vb_target_setup(SEXP model, SEXP holder, vb_target *T) {
    SEXP type = vb_elt_req(model, "type", "model");
    if (TYPEOF(type) != STRSXP || Rf_length(type) != 1 || STRING_ELT(type, 0) == NA_STRING)
        Rf_error("'model$type' must be a string: \"glm\", \"gauss\" or \"r\"");
    const char *ty = CHAR(STRING_ELT(type, 0));
    T->status = NULL;
    if (strcmp(ty, "glm") == 0)
        glm_setup(model, T);
    else if (strcmp(ty, "gauss") == 0)
        gauss_setup(model, T);
    else if (strcmp(ty, "r") == 0)
        r_setup(model, holder, T);
    else
        Rf_error("unknown model type '%s' (expected \"glm\", \"gauss\" or \"r\")", ty);
}

/* ------------------------------------------- GLM start and moments -- */

/*
 * H = X' diag(w) X + diag(1 / b_j^2) at theta, the curvature of -log p(y,
 * beta) (w_t = wt_t e^eta_t Poisson, wt_t pr_t (1 - pr_t) binomial,
 * tau wt_t gaussian at its log tau theta[p]; laplace priors: 1/b^2 stands
 * in).  w: n scratch; work: min(n, VB_CHUNK) p.  Cost n p^2 (one dsyrk
 * pass).  Returns vb_xtwx()'s status.
 */
static int glm_curvature(const vb_glm *M, const double *theta, double *w, double *work, double *H) {
    int n = M->n, p = M->p, one = 1;
    double done = 1.0, dm, dv;
    vb_glm Mt = *M; /* gaussian: the curvature at tau = exp(theta[p]) */
    if (M->family == VB_GAUSSIAN) {
        Mt.Etau = exp(theta[p]);
        Mt.Elogtau = theta[p];
    }
    for (int t = 0; t < n; t++)
        w[t] = M->off[t];
    F77_CALL(dgemv)("N", &n, &p, &done, M->X, &n, theta, &one, &done, w, &one FCONE);
    for (int t = 0; t < n; t++) { /* W = -2 df/dv at v = 0: the family's own derivatives */
        vb_glm_obs(&Mt, t, w[t], 0, &dm, &dv);
        w[t] = -2.0 * dv;
        if (!R_FINITE(w[t])) w[t] = 0; /* an overflowing row adds no usable curvature */
    }
    int st = vb_xtwx(n, p, M->X, n, w, work, H);
    for (int j = 0; j < p; j++)
        H[j + (size_t)j * p] += 1.0 / (M->pscale[j] * M->pscale[j]);
    return st;
}

/*
 * The Laplace start of GLM SGVB: damped Newton steps on log p(y, theta) in
 * beta (theta[p], gaussian log tau, held fixed) towards the mode, and the
 * curvature H there.  The curvature (one X'WX) is refreshed only after a
 * step whose Newton decrement g'H^{-1}g exceeded 1 nat, and once at the end
 * if beta moved by more than 0.01 nat since; steps in between reuse it
 * (chord steps, one gradient each).  Each step halves until log p does not
 * decrease; the search stops once the decrement is below 1e-4 nat (the mode
 * within about 0.01 posterior sd: the SGVB steps finish the job), log p
 * rises by less than 1e-8 relative, or 50 steps.  theta (d) is updated in
 * place; g, gn, tn: d scratch; R: p^2; dir: p.
 * Returns VB_OK, VB_NOT_PD (H not positive definite: theta is where it
 * stopped, H its curvature), VB_NONFINITE (log p not finite at the start)
 * or VB_INTERRUPTED.
 */
static int glm_start_worker(vb_glm *M, double *theta, double *H, double *R, double *g, double *gn,
                            double *tn, double *dir, double *w, double *work, int *steps) {
    int p = M->p, d = p + (M->family == VB_GAUSSIAN);
    *steps = 0;
    double f = vb_glm_log_joint(theta, g, M);
    if (!R_FINITE(f)) return VB_NONFINITE;
    int st = glm_curvature(M, theta, w, work, H);
    if (st != VB_OK) return st;
    memcpy(R, H, sizeof(double) * (size_t)p * p);
    if (vb_chol(p, R, p) != 0) return VB_NOT_PD;
    double moved = 0;
    for (int it = 0; it < 50; it++) {
        if (vb_interrupted()) return VB_INTERRUPTED;
        memcpy(dir, g, sizeof(double) * p);
        vb_chol_solve(p, R, p, dir);
        double dec = 0;
        for (int j = 0; j < p; j++)
            dec += g[j] * dir[j];
        if (!R_FINITE(dec) || dec < 1e-4) break;
        double a = 1, fn = R_NegInf;
        for (;;) {
            memcpy(tn, theta, sizeof(double) * d);
            for (int j = 0; j < p; j++)
                tn[j] += a * dir[j];
            fn = vb_glm_log_joint(tn, gn, M);
            if (R_FINITE(fn) && fn >= f) break;
            a *= 0.5;
            if (a < 1e-8) break;
        }
        (*steps)++;
        if (a < 1e-8) break;
        double up = fn - f;
        memcpy(theta, tn, sizeof(double) * d);
        memcpy(g, gn, sizeof(double) * d);
        f = fn;
        moved += a * dec;
        if (dec > 1) {
            st = glm_curvature(M, theta, w, work, H);
            if (st != VB_OK) return st;
            memcpy(R, H, sizeof(double) * (size_t)p * p);
            if (vb_chol(p, R, p) != 0) return VB_NOT_PD;
            moved = 0;
        }
        if (up <= 1e-8 * (1 + fabs(f))) break;
    }
    if (moved > 1e-2) {
        st = glm_curvature(M, theta, w, work, H);
        if (st != VB_OK) return st;
    }
    return VB_OK;
}

/* C_sgvb_glm_start(model, theta0): list(mu, H, steps, status) (see the worker). */
SEXP C_sgvb_glm_start(SEXP model, SEXP theta0) {
    vb_glm M;
    vb_glm_unpack(model, &M);
    int n = M.n, p = M.p, d = p + (M.family == VB_GAUSSIAN), np = 0;
    if (p < 1) Rf_error("the GLM start needs at least one coefficient");
    if (TYPEOF(theta0) != REALSXP || Rf_xlength(theta0) != d)
        Rf_error("'theta0' must be a double vector of length %d", d);
    for (int j = 0; j < d; j++)
        if (!R_FINITE(REAL(theta0)[j])) Rf_error("'theta0' must be finite");
    M.eta = (double *)R_alloc((size_t)n + 1, sizeof(double));
    int nc = n < VB_CHUNK ? n : VB_CHUNK;
    double *w = (double *)R_alloc((size_t)n + 1, sizeof(double));
    double *work = (double *)R_alloc((size_t)nc * p + 1, sizeof(double));
    double *R = (double *)R_alloc((size_t)p * p, sizeof(double));
    double *g = (double *)R_alloc(d, sizeof(double)), *gn = (double *)R_alloc(d, sizeof(double));
    double *tn = (double *)R_alloc(d, sizeof(double)), *dir = (double *)R_alloc(p, sizeof(double));
    const char *nms[] = {"mu", "H", "steps", "status", ""};
    SEXP out = vb_named_list(nms, &np);
    SEXP mu = Rf_allocVector(REALSXP, d);
    SET_VECTOR_ELT(out, 0, mu);
    SEXP H = Rf_allocMatrix(REALSXP, p, p);
    SET_VECTOR_ELT(out, 1, H);
    memcpy(REAL(mu), REAL(theta0), sizeof(double) * d);
    memset(REAL(H), 0, sizeof(double) * (size_t)p * p);
    int steps = 0;
    int status = glm_start_worker(&M, REAL(mu), REAL(H), R, g, gn, tn, dir, w, work, &steps);
    SET_VECTOR_ELT(out, 2, Rf_ScalarInteger(steps));
    SET_VECTOR_ELT(out, 3, Rf_ScalarInteger(status));
    UNPROTECT(np);
    return out;
}

/*
 * The closed-form ELBO of a (non-gaussian) GLM target at q(beta) = N(mu,
 * L L') (L lower, p x p; diag: only its diagonal is used), as C_glm_elbo
 * computes it (the same per-row expectations vb_glm_obs and prior terms
 * vb_glm_prior), and the linear predictor's moments m_t = x_t'mu + off_t,
 * v_t = |L'x_t|^2.  out = c(elbo, loglik, kl).  work: min(n, VB_CHUNK) p.
 * Cost O(n p^2 / 2) (a dtrmm per chunk of rows), O(n p) with diag.  Returns
 * VB_OK, VB_BAD_INPUT (not a GLM target, or gaussian: its q is joint over
 * log tau) or VB_INTERRUPTED.
 */
int vb_glm_target_moments(const vb_target *T, const double *mu, const double *L, int diag,
                          double *m, double *v, double *work, double *out) {
    if (T->f != vb_glm_log_joint) return VB_BAD_INPUT;
    const vb_glm *M = (const vb_glm *)T->model;
    if (M->family == VB_GAUSSIAN) return VB_BAD_INPUT;
    int n = M->n, p = M->p, one = 1;
    double done = 1.0;
    for (int t = 0; t < n; t++)
        m[t] = M->off[t];
    F77_CALL(dgemv)("N", &n, &p, &done, M->X, &n, mu, &one, &done, m, &one FCONE);
    for (int t0 = 0; t0 < n; t0 += VB_CHUNK) {
        int nc = n - t0 < VB_CHUNK ? n - t0 : VB_CHUNK;
        for (int t = 0; t < nc; t++)
            v[t0 + t] = 0;
        if (diag) {
            for (int j = 0; j < p; j++) {
                const double *xj = M->X + (size_t)j * n + t0;
                double l2 = L[j + (size_t)j * p] * L[j + (size_t)j * p];
                for (int t = 0; t < nc; t++)
                    v[t0 + t] += xj[t] * xj[t] * l2;
            }
        } else {
            for (int j = 0; j < p; j++)
                memcpy(work + (size_t)j * nc, M->X + (size_t)j * n + t0, sizeof(double) * nc);
            F77_CALL(dtrmm)
            ("R", "L", "N", "N", &nc, &p, &done, L, &p, work, &nc FCONE FCONE FCONE FCONE);
            for (int j = 0; j < p; j++) {
                const double *zj = work + (size_t)j * nc;
                for (int t = 0; t < nc; t++)
                    v[t0 + t] += zj[t] * zj[t];
            }
        }
        if (n > VB_CHUNK && vb_interrupted()) return VB_INTERRUPTED;
    }
    double F = M->llconst, G = 0, ldet = 0, a, c;
    for (int t = 0; t < n; t++)
        F += vb_glm_obs(M, t, m[t], v[t], &a, &c);
    for (int j = 0; j < p; j++) {
        double s2 = 0;
        for (int k = 0; k <= j; k++)
            if (!diag || k == j) s2 += L[j + (size_t)k * p] * L[j + (size_t)k * p];
        G += vb_glm_prior(M, j, mu[j], s2, &a, &c);
        ldet += 2.0 * log(L[j + (size_t)j * p]);
    }
    double negkl = G + 0.5 * ldet + 0.5 * p * (1 + VB_LOG2PI);
    out[0] = F + negkl;
    out[1] = F;
    out[2] = -negkl;
    return VB_OK;
}
