/*
 * sgvb.c — stochastic-gradient variational Bayes over the log-joint contract.
 *
 * Model: any log p(y, theta), theta in R^d, reached through a vb_log_joint
 * (vbayes.h): a GLM (glm.c), an R closure (vb_density(); central differences
 * when the user gives no gradient) or a Gaussian test target.
 *
 * q(theta) = N(mu, L L'), L lower triangular with positive diagonal.
 * Parameters lambda: mu (d), then either log L_jj (meanfield, d) or the
 * lower triangle of L column by column with log L_jj on the diagonal
 * (fullrank, d(d+1)/2).  ELBO = E_q f(theta) + H(q), f = log p(y, theta), with
 * the Gaussian entropy H = sum_j log L_jj + d/2 (1 + log 2 pi) in closed form.
 *
 * Gradient of E_q f, theta = mu + L eps, eps ~ N(0, I), S draws per step:
 *   reparam: d/dmu = a, d/dL_ij = a_i eps_j (i > j), d/dlog L_jj = a_j eps_j L_jj
 *            with a = grad f(theta) plus the entropy gradient (+1 per
 *            log L_jj); or, with stl ("sticking the landing", Roeder et al.
 *            2017, the default), a = grad f(theta) + L^{-T} eps, the path
 *            derivative of f - log q: the dropped score term has mean zero,
 *            and the estimate has zero variance when q equals a Gaussian
 *            target, small variance near one.
 *   score:   (f(theta) - c) d/dlambda log q(theta; lambda) with
 *            d log q/dmu = u = L^{-T} eps, d/dL_ij = u_i eps_j,
 *            d/dlog L_jj = u_j eps_j L_jj - 1.
 *            Baseline c (unbiased because it is independent of the draw it
 *            multiplies): with S >= 2 the mean of f over the other S - 1 draws
 *            of the step (leave-one-out); with S = 1 an exponential moving
 *            average (weight 0.9) of f over the previous steps.
 *   Score adds the entropy gradient, +1 per log L_jj.
 *
 * Optimiser: Adam (beta1 0.9, beta2 0.999).  Its step is eta for the
 * log L_jj and eta * sd_i (sd_i the current marginal sd of theta_i, the norm
 * of row i of L) for L_ij; the locations move in whitened coordinates
 * u (mu = Lpre u) when a lower-triangular Lpre is given (the Cholesky factor
 * of the inverse curvature at the start: posterior correlations then cost no
 * extra steps), else by eta * sd_i; with Lpre a fullrank L is written
 * L = Lpre Lt and Lt (near the identity for near-Gaussian posteriors) is the
 * parameter, its steps eta.  Steps are thus measured in posterior
 * standard deviations and one eta fits any scaling of theta.
 * Step size: trial runs of adapt_iter steps for each eta of the grid
 * 1, 0.3, ..., 0.003 (largest first, stopping when the mean ELBO of a trial
 * gets worse, as ADVI does); the run continues from the best trial.
 * The ELBO is estimated per step by the mean of f - log q over the draws (its
 * noise vanishes as q approaches the posterior).  The run is cut into windows
 * of `window` steps; the smoothed ELBO is the window mean.  A window "stalls"
 * when the smoothed ELBO's relative change is below tol or its change lies
 * within two standard errors.  A stall halves eta, restarts from the window's
 * average of lambda and clears Adam's moments, until at least `decays`
 * halvings are done and eta <= eta_final = min(ETA_FINAL, 0.1/sqrt(P)) (the
 * searched eta is raised to eta_final if below); the next stall starts the
 * final phase, which averages the window means of
 * lambda (Polyak averaging) and stops (converged) at a stall after at least
 * three windows when the batch-means standard error of every location and
 * log-scale is below `prec` (in posterior sds for locations, log units for
 * scales).
 * maxit caps the number of steps.  The returned q is that average; its ELBO
 * is estimated from elbo_samples fresh draws, with its standard error.
 *
 * Inputs: model list, mu0 (d), L0 (d x d, lower triangle used), control,
 * Lpre (d x d lower, or NULL).
 * Outputs: mu, L, elbo, elbo_se, trace (per-step ELBO estimates), smooth
 * (window means), eta, iterations, converged, n_grad, n_eval.
 * Cost per step: S evaluations of log p and its gradient plus O(S d^2)
 * (fullrank) or O(S d) (meanfield); memory O(d^2 + maxit).
 */
#include "vbayes.h"
#include <time.h>

#define LOG2PI 1.837877066409345483560659472811
/* Halvings continue until eta is at most min(this, 0.1 / sqrt(P)): with
 * Adam's normalised steps the stationary jitter is of order eta posterior sds
 * per parameter, which the final averaging removes; much smaller steps would
 * only slow that averaging. */
#define ETA_FINAL 0.0301

/* -------------------------------------------------------------- targets -- */

/* Gaussian test target: f = -1/2 (theta - m)' A (theta - m). */
typedef struct {
    int d;
    const double *m, *A;
    double *r;
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

/* A user's R function of theta; gr may be R_NilValue (central differences). */
typedef struct {
    int d;
    SEXP fn, gr;
    double *work;
} r_target;

static double r_value(r_target *T, const double *theta) {
    SEXP th = PROTECT(Rf_allocVector(REALSXP, T->d));
    memcpy(REAL(th), theta, sizeof(double) * T->d);
    SEXP call = PROTECT(Rf_lang2(T->fn, th));
    SEXP v = PROTECT(Rf_eval(call, R_GlobalEnv));
    if (!Rf_isNumeric(v) || Rf_length(v) != 1)
        Rf_error("vb_density(): 'log_density' must return a single number.");
    double out = Rf_asReal(v);
    UNPROTECT(3);
    return out;
}

static double r_log_joint(const double *theta, double *grad, void *model) {
    r_target *T = (r_target *)model;
    int d = T->d;
    double f = r_value(T, theta);
    if (!grad) return f;
    if (T->gr != R_NilValue) {
        SEXP th = PROTECT(Rf_allocVector(REALSXP, d));
        memcpy(REAL(th), theta, sizeof(double) * d);
        SEXP call = PROTECT(Rf_lang2(T->gr, th));
        SEXP g = PROTECT(Rf_eval(call, R_GlobalEnv));
        if (!Rf_isNumeric(g) || Rf_length(g) != d)
            Rf_error("vb_density(): 'gradient' must return a numeric vector of length %d.", d);
        for (int i = 0; i < d; i++)
            grad[i] = Rf_isReal(g) ? REAL(g)[i] : (double)INTEGER(g)[i];
        UNPROTECT(3);
        return f;
    }
    /* central differences, step ~ cube root of the machine epsilon */
    memcpy(T->work, theta, sizeof(double) * d);
    for (int i = 0; i < d; i++) {
        double h = 6e-6 * fmax(1.0, fabs(theta[i]));
        T->work[i] = theta[i] + h;
        double fp = r_value(T, T->work);
        T->work[i] = theta[i] - h;
        double fm = r_value(T, T->work);
        T->work[i] = theta[i];
        grad[i] = (fp - fm) / (2.0 * h);
    }
    return f;
}

typedef struct {
    vb_log_joint f;
    void *model;
    int d;
    vb_glm glm;
    gauss_target gauss;
    r_target r;
} target;

static SEXP elt(SEXP list, const char *name) {
    SEXP names = Rf_getAttrib(list, R_NamesSymbol);
    if (TYPEOF(list) != VECSXP || Rf_isNull(names)) Rf_error("'model' must be a named list");
    for (R_xlen_t i = 0; i < Rf_xlength(list); i++)
        if (strcmp(CHAR(STRING_ELT(names, i)), name) == 0) return VECTOR_ELT(list, i);
    Rf_error("model list has no element '%s'", name);
    return R_NilValue;
}

/* model: list(type = "glm", glm = <glm model list>) | list(type = "gauss", m, A)
 *        | list(type = "r", fn, gr, d).  Sets the contract pointer and d. */
static void target_setup(SEXP model, target *T) {
    SEXP type = elt(model, "type");
    if (!Rf_isString(type) || Rf_length(type) != 1) Rf_error("model 'type' must be a string");
    const char *ty = CHAR(STRING_ELT(type, 0));
    if (strcmp(ty, "glm") == 0) {
        vb_glm_unpack(elt(model, "glm"), &T->glm);
        T->glm.eta = (double *)R_alloc(T->glm.n + 1, sizeof(double));
        T->d = T->glm.p + (T->glm.family == VB_GAUSSIAN);
        T->f = vb_glm_log_joint;
        T->model = &T->glm;
    } else if (strcmp(ty, "gauss") == 0) {
        SEXP m = elt(model, "m"), A = elt(model, "A");
        if (!Rf_isReal(m) || !Rf_isReal(A) || Rf_length(A) != Rf_length(m) * Rf_length(m))
            Rf_error("gauss target needs double m (d) and A (d x d)");
        T->d = Rf_length(m);
        if (T->d < 1) Rf_error("gauss target needs d >= 1");
        T->gauss.d = T->d;
        T->gauss.m = REAL(m);
        T->gauss.A = REAL(A);
        T->gauss.r = (double *)R_alloc(T->d + 1, sizeof(double));
        T->f = gauss_log_joint;
        T->model = &T->gauss;
    } else if (strcmp(ty, "r") == 0) {
        SEXP fn = elt(model, "fn"), gr = elt(model, "gr"), d = elt(model, "d");
        if (!Rf_isFunction(fn)) Rf_error("'fn' must be a function");
        if (gr != R_NilValue && !Rf_isFunction(gr)) Rf_error("'gr' must be a function or NULL");
        if (!Rf_isInteger(d) || Rf_length(d) != 1 || INTEGER(d)[0] < 1)
            Rf_error("'d' must be a positive integer");
        T->d = INTEGER(d)[0];
        T->r.d = T->d;
        T->r.fn = fn;
        T->r.gr = gr;
        T->r.work = (double *)R_alloc(T->d, sizeof(double));
        T->f = r_log_joint;
        T->model = &T->r;
    } else
        Rf_error("unknown model type '%s'", ty);
}

/* --------------------------------------------------------------- engine -- */

typedef struct {
    vb_log_joint f;
    void *model;
    int d, P, fullrank, score, S, baseline, stl;
    double *mu, *L;           /* current q                              */
    double *eps, *z, *gf, *u; /* S x d draws, gradients; d scratch      */
    double *fz, *gacc;        /* S values; P accumulated gradient       */
    double ema;               /* S = 1 score baseline                   */
    int ema_set;
    double n_grad, n_eval;
    const double *pre; /* optional d x d lower preconditioner of the locations */
    double *ustep;
    int tw;          /* fullrank with pre: L = pre Lt, Lt parameterised     */
    double *Lt, *aw; /* d x d, d                                             */
} sgvb;

static int npar(int d, int fullrank) {
    return d + (fullrank ? d * (d + 1) / 2 : d);
}

static void unpack(sgvb *Q, const double *lam) {
    int d = Q->d, k = d;
    memcpy(Q->mu, lam, sizeof(double) * d);
    memset(Q->L, 0, sizeof(double) * d * d);
    if (!Q->fullrank) {
        for (int j = 0; j < d; j++)
            Q->L[j + (size_t)j * d] = exp(lam[k++]);
        return;
    }
    double *T = Q->tw ? Q->Lt : Q->L;
    if (Q->tw) memset(T, 0, sizeof(double) * d * d);
    for (int j = 0; j < d; j++)
        for (int i = j; i < d; i++, k++)
            T[i + (size_t)j * d] = i == j ? exp(lam[k]) : lam[k];
    if (Q->tw) {
        double one = 1.0;
        memcpy(Q->L, T, sizeof(double) * d * d);
        F77_CALL(dtrmm)
        ("L", "L", "N", "N", &d, &d, &one, Q->pre, &d, Q->L, &d FCONE FCONE FCONE FCONE);
    }
}

static void pack(int d, int fullrank, const double *mu, const double *L, double *lam) {
    int k = d;
    memcpy(lam, mu, sizeof(double) * d);
    for (int j = 0; j < d; j++) {
        if (!fullrank) {
            lam[k++] = log(L[j + (size_t)j * d]);
            continue;
        }
        for (int i = j; i < d; i++, k++)
            lam[k] = i == j ? log(L[i + (size_t)j * d]) : L[i + (size_t)j * d];
    }
}

static double entropy(const sgvb *Q) {
    double h = 0.5 * Q->d * (1.0 + LOG2PI);
    for (int j = 0; j < Q->d; j++)
        h += log(Q->L[j + (size_t)j * Q->d]);
    return h;
}

/* theta = mu + L eps for column s */
static void draw(sgvb *Q, int s) {
    int d = Q->d;
    double *e = Q->eps + (size_t)s * d, *z = Q->z + (size_t)s * d;
    for (int i = 0; i < d; i++)
        e[i] = norm_rand();
    for (int i = 0; i < d; i++) {
        double v = Q->mu[i];
        int jmax = Q->fullrank ? i : 0;
        if (Q->fullrank)
            for (int j = 0; j <= jmax; j++)
                v += Q->L[i + (size_t)j * d] * e[j];
        else
            v += Q->L[i + (size_t)i * d] * e[i];
        z[i] = v;
    }
}

/* Adds w * (per-draw vector a over mu, L entries given eps) to acc: entries
 * a_i for mu, a_i eps_j for L_ij, a_j eps_j L_jj for log L_jj. */
static void add_outer(sgvb *Q, const double *a, const double *e, double w, double *acc) {
    int d = Q->d, k = d;
    for (int i = 0; i < d; i++)
        acc[i] += w * a[i];
    const double *Ld = Q->L;
    if (Q->tw) {
        /* L = pre Lt: d/dLt = tril(pre' (d/dL)), and d/dL = a e' */
        int one = 1;
        memcpy(Q->aw, a, sizeof(double) * d);
        F77_CALL(dtrmv)("L", "T", "N", &d, Q->pre, &d, Q->aw, &one FCONE FCONE FCONE);
        a = Q->aw;
        Ld = Q->Lt;
    }
    for (int j = 0; j < d; j++) {
        if (!Q->fullrank) {
            acc[k++] += w * a[j] * e[j] * Ld[j + (size_t)j * d];
            continue;
        }
        for (int i = j; i < d; i++, k++)
            acc[k] += w * a[i] * e[j] * (i == j ? Ld[j + (size_t)j * d] : 1.0);
    }
}

/* u = L^{-T} e */
static void inv_lt(const sgvb *Q, const double *e, double *u) {
    int d = Q->d, one = 1;
    memcpy(u, e, sizeof(double) * d);
    if (Q->fullrank)
        F77_CALL(dtrsv)("L", "T", "N", &d, Q->L, &d, u, &one FCONE FCONE FCONE);
    else
        for (int i = 0; i < d; i++)
            u[i] /= Q->L[i + (size_t)i * d];
}

/*
 * One stochastic gradient of the ELBO at the current q, S draws, into Q->gacc
 * (length P).  Returns the MC ELBO estimate; non-finite when some draw had a
 * non-finite log density or gradient.
 */
static double estimate(sgvb *Q) {
    int d = Q->d, S = Q->S, P = Q->P;
    double fsum = 0, esum = 0;
    memset(Q->gacc, 0, sizeof(double) * P);
    for (int s = 0; s < S; s++) {
        draw(Q, s);
        double *g = Q->score ? NULL : Q->gf + (size_t)s * d;
        Q->fz[s] = Q->f(Q->z + (size_t)s * d, g, Q->model);
        if (g)
            Q->n_grad += 1;
        else
            Q->n_eval += 1;
        if (!R_FINITE(Q->fz[s])) return R_NaN;
        if (g)
            for (int i = 0; i < d; i++)
                if (!R_FINITE(g[i])) return R_NaN;
        fsum += Q->fz[s];
        /* -log q(theta) = sum log L_jj + d/2 log 2 pi + |eps|^2 / 2: estimating
         * the ELBO by f - log q (not f + exact entropy) makes its noise vanish
         * as q approaches the posterior, which sharpens the stall test */
        double *e = Q->eps + (size_t)s * d;
        for (int i = 0; i < d; i++)
            esum += 0.5 * e[i] * e[i];
    }
    double elbo = (fsum + esum) / S + entropy(Q) - 0.5 * d;
    if (!Q->score && Q->stl) {
        /* path derivative of f - log q: a = grad f(theta) + L^{-T} eps */
        for (int s = 0; s < S; s++) {
            double *e = Q->eps + (size_t)s * d, *g = Q->gf + (size_t)s * d;
            inv_lt(Q, e, Q->u);
            for (int i = 0; i < d; i++)
                Q->u[i] += g[i];
            add_outer(Q, Q->u, e, 1.0 / S, Q->gacc);
        }
        return elbo;
    }
    if (!Q->score) {
        for (int s = 0; s < S; s++)
            add_outer(Q, Q->gf + (size_t)s * d, Q->eps + (size_t)s * d, 1.0 / S, Q->gacc);
    } else {
        double prev = Q->ema;
        for (int s = 0; s < S; s++) {
            double c = 0;
            if (Q->baseline) {
                if (S >= 2)
                    c = (fsum - Q->fz[s]) / (S - 1);
                else
                    c = Q->ema_set ? prev : 0;
            }
            double *e = Q->eps + (size_t)s * d;
            inv_lt(Q, e, Q->u); /* the score of mu */
            double w = (Q->fz[s] - c) / S;
            add_outer(Q, Q->u, e, w, Q->gacc);
            /* the -1 of the log-diagonal score */
            int k = d;
            for (int j = 0; j < d; j++) {
                Q->gacc[k] -= w;
                k += Q->fullrank ? d - j : 1;
            }
        }
        if (Q->baseline && S == 1) {
            Q->ema = Q->ema_set ? 0.9 * Q->ema + 0.1 * Q->fz[0] : Q->fz[0];
            Q->ema_set = 1;
        }
    }
    /* entropy gradient: +1 per log L_jj */
    for (int j = 0, k = d; j < d; j++) {
        Q->gacc[k] += 1.0;
        k += Q->fullrank ? d - j : 1;
    }
    return elbo;
}

/* Per-parameter step scale: sd_i for mu_i and L_ij, 1 for log L_jj. */
static void step_scale(const sgvb *Q, double *sc) {
    int d = Q->d, k = d;
    for (int i = 0; i < d; i++) {
        double ss = 0;
        for (int j = 0; j < d; j++)
            ss += Q->L[i + (size_t)j * d] * Q->L[i + (size_t)j * d];
        sc[i] = sqrt(ss);
    }
    for (int j = 0; j < d; j++) {
        if (!Q->fullrank) {
            sc[k++] = 1.0;
            continue;
        }
        for (int i = j; i < d; i++, k++)
            sc[k] = i == j || Q->tw ? 1.0 : sc[i];
    }
}

typedef struct {
    double *lam, *m, *v, *sc;
    double t; /* Adam step count */
} adam;

static void adam_init(adam *A, int P) {
    A->lam = (double *)R_alloc(P, sizeof(double));
    A->m = (double *)R_alloc(P, sizeof(double));
    A->v = (double *)R_alloc(P, sizeof(double));
    A->sc = (double *)R_alloc(P, sizeof(double));
    memset(A->m, 0, sizeof(double) * P);
    memset(A->v, 0, sizeof(double) * P);
    A->t = 0;
}

static void adam_copy(adam *dst, const adam *src, int P) {
    memcpy(dst->lam, src->lam, sizeof(double) * P);
    memcpy(dst->m, src->m, sizeof(double) * P);
    memcpy(dst->v, src->v, sizeof(double) * P);
    dst->t = src->t;
}

/* One Adam step on A->lam; returns the ELBO estimate (NaN: the step was
 * skipped because of a non-finite log density). */
static double adam_step(sgvb *Q, adam *A, double eta) {
    unpack(Q, A->lam);
    double e = estimate(Q);
    if (!R_FINITE(e)) return R_NaN;
    step_scale(Q, A->sc);
    int d = Q->d, one = 1;
    if (Q->pre) {
        /* locations in whitened coordinates u, mu = mu0 + Lpre u: gradient
         * Lpre' g, step Lpre du */
        F77_CALL(dtrmv)("L", "T", "N", &d, Q->pre, &d, Q->gacc, &one FCONE FCONE FCONE);
        for (int i = 0; i < d; i++)
            A->sc[i] = 1.0;
    }
    A->t += 1;
    double c1 = 1.0 - pow(0.9, A->t), c2 = 1.0 - pow(0.999, A->t);
    for (int k = 0; k < Q->P; k++) {
        double g = Q->gacc[k];
        A->m[k] = 0.9 * A->m[k] + 0.1 * g;
        A->v[k] = 0.999 * A->v[k] + 0.001 * g * g;
        double step = eta * A->sc[k] * (A->m[k] / c1) / (sqrt(A->v[k] / c2) + 1e-8);
        /* a log-diagonal (or whitened location) never moves by more than 1 */
        if (A->sc[k] == 1.0 && fabs(step) > 1.0) step = step > 0 ? 1.0 : -1.0;
        if (Q->pre && k < d)
            Q->ustep[k] = step;
        else
            A->lam[k] += step;
    }
    if (Q->pre) {
        F77_CALL(dtrmv)("L", "N", "N", &d, Q->pre, &d, Q->ustep, &one FCONE FCONE FCONE);
        for (int i = 0; i < d; i++)
            A->lam[i] += Q->ustep[i];
    }
    return e;
}

/* Runs n steps; returns mean ELBO estimate over the second half (-Inf when it
 * diverged or the log density failed too often). */
static double trial(sgvb *Q, adam *A, double eta, int n) {
    double sum = 0;
    int cnt = 0, bad = 0;
    for (int it = 0; it < n; it++) {
        double e = adam_step(Q, A, eta);
        if (!R_FINITE(e)) {
            if (++bad > n / 2) return R_NegInf;
            continue;
        }
        for (int k = 0; k < Q->P; k++)
            if (!R_FINITE(A->lam[k])) return R_NegInf;
        if (it >= n / 2) {
            sum += e;
            cnt++;
        }
        if (it % 16 == 15) R_CheckUserInterrupt();
    }
    return cnt ? sum / cnt : R_NegInf;
}

typedef struct {
    int maxit, quiet, adapt_iter, window, decays, elbo_samples;
    double tol, eta, prec; /* eta <= 0: adaptive */
} run_control;

typedef struct {
    double elbo, elbo_se, eta;
    int iterations, converged, ntrace, nsmooth;
    double *trace, *smooth;
} run_result;

static void run(sgvb *Q, const run_control *C, double *lam, run_result *R) {
    int P = Q->P, d = Q->d;
    adam A, best, tmp;
    adam_init(&A, P);
    adam_init(&best, P);
    adam_init(&tmp, P);
    memcpy(A.lam, lam, sizeof(double) * P);
    clock_t tlast = clock();
    double eta = C->eta;
    /* Adam's jitter costs about P eta^2 nats of ELBO before averaging: the
     * final step shrinks with the number of parameters */
    double eta_final = fmin(ETA_FINAL, 0.1 / sqrt((double)P));
    if (!(eta > 0)) {
        /* ADVI-style search over a grid, largest first */
        static const double grid[] = {1.0, 0.3, 0.1, 0.03, 0.01, 0.003};
        double bestv = R_NegInf, prevv = R_NegInf;
        eta = grid[5];
        for (int gi = 0; gi < 6; gi++) {
            adam_copy(&tmp, &A, P);
            double v = trial(Q, &tmp, grid[gi], C->adapt_iter);
            if (!C->quiet && (double)(clock() - tlast) / CLOCKS_PER_SEC > 1.0) {
                tlast = clock();
                Rprintf("sgvb: step-size search, eta = %g, ELBO %.4f\n", grid[gi], v);
            }
            if (v > bestv) {
                bestv = v;
                eta = grid[gi];
                adam_copy(&best, &tmp, P);
            }
            if (R_FINITE(prevv) && v < prevv) break;
            prevv = v;
        }
        if (!R_FINITE(bestv))
            Rf_error(
                "the stochastic optimisation diverged for every step size tried; "
                "check that the log density is finite near 'init' or give a smaller step_size.");
        adam_copy(&A, &best, P);
        /* a start close to the optimum makes the smallest trial step look
         * best; a step below eta_final would only freeze the iterate */
        if (eta < eta_final) eta = eta_final;
    }
    int *isdiag = (int *)R_alloc(P, sizeof(int));
    for (int k = 0; k < P; k++)
        isdiag[k] = 0;
    for (int j = 0, k = d; j < d; j++) {
        isdiag[k] = 1;
        k += Q->fullrank ? d - j : 1;
    }
    int W = C->window, it = 0, decays = 0, converged = 0, bad = 0;
    double *avg = (double *)R_alloc(P, sizeof(double)); /* window sum of lambda   */
    double *bs = (double *)R_alloc(P, sizeof(double));  /* final phase: sum and   */
    double *bq = (double *)R_alloc(P, sizeof(double));  /* sum of squares of the  */
    double *sc = (double *)R_alloc(P, sizeof(double));  /* window means; scales   */
    double wsum = 0, wss = 0, prev_mean = R_NaN, prev_se = 0;
    int wn = 0, nb = 0, final = 0;
    memset(avg, 0, sizeof(double) * P);
    memset(bs, 0, sizeof(double) * P);
    memset(bq, 0, sizeof(double) * P);
    R->ntrace = 0;
    R->nsmooth = 0;
    while (it < C->maxit) {
        double e = adam_step(Q, &A, eta);
        it++;
        if (!R_FINITE(e)) {
            if (++bad >= 100)
                Rf_error(
                    "the log density was not finite at 100 consecutive draws from q; "
                    "check its support (transform constrained parameters) or the starting values.");
            continue;
        }
        bad = 0;
        R->trace[R->ntrace++] = e;
        wsum += e;
        wss += e * e;
        wn++;
        for (int k = 0; k < P; k++)
            avg[k] += A.lam[k];
        if (wn < W) {
            if (it % 16 == 0) R_CheckUserInterrupt();
            continue;
        }
        double mean = wsum / wn, var = (wss - wn * mean * mean) / (wn - 1);
        double se = sqrt(fmax(var, 0) / wn);
        R->smooth[R->nsmooth++] = mean;
        int stall = 0;
        if (R_FINITE(prev_mean)) {
            double ch = mean - prev_mean;
            stall =
                fabs(ch) <= C->tol * fabs(mean) || ch <= 2.0 * sqrt(se * se + prev_se * prev_se);
        }
        for (int k = 0; k < P; k++)
            avg[k] /= wn;
        if (!C->quiet && (double)(clock() - tlast) / CLOCKS_PER_SEC > 1.0) {
            tlast = clock();
            Rprintf("sgvb: iteration %d, smoothed ELBO %.4f, step %.3g%s\n", it, mean, eta,
                    final ? " (averaging)" : "");
        }
        if (!final) {
            if (stall && eta <= eta_final && decays >= C->decays) {
                final = 1; /* averaging starts with the next window */
            } else if (stall) {
                /* halve the step and restart from the window's average */
                decays++;
                eta *= 0.5;
                memcpy(A.lam, avg, sizeof(double) * P);
                /* forget the moments: gradients near the optimum are far
                 * smaller than those that filled v on the way there, and a
                 * stale v would freeze the iterate */
                memset(A.m, 0, sizeof(double) * P);
                memset(A.v, 0, sizeof(double) * P);
                A.t = 0;
            }
        } else {
            /* batch means of the window averages: stop once the average of
             * lambda is known to prec posterior sds (log units for scales) */
            for (int k = 0; k < P; k++) {
                bs[k] += avg[k];
                bq[k] += avg[k] * avg[k];
            }
            nb++;
            if (nb >= 3 && stall) {
                unpack(Q, A.lam);
                step_scale(Q, sc);
                double worst = 0;
                /* locations and log-diagonals only: the many off-diagonals
                 * of a fullrank L move the ELBO little and would dominate */
                for (int k = 0; k < P; k++) {
                    if (Q->fullrank && k >= d && !isdiag[k]) continue;
                    double m = bs[k] / nb, v = fmax((bq[k] - nb * m * m) / (nb - 1), 0);
                    double r = sqrt(v / nb) / sc[k];
                    if (r > worst) worst = r;
                }
                if (worst <= C->prec) {
                    converged = 1;
                    break;
                }
            }
        }
        prev_mean = mean;
        prev_se = se;
        wsum = wss = 0;
        wn = 0;
        memset(avg, 0, sizeof(double) * P);
        R_CheckUserInterrupt();
    }
    /* q: the mean of the final phase's window averages (Polyak averaging),
     * or the current iterate when the cap came first */
    if (nb > 0)
        for (int k = 0; k < P; k++)
            A.lam[k] = bs[k] / nb;
    memcpy(lam, A.lam, sizeof(double) * P);
    unpack(Q, lam);
    /* final ELBO from fresh draws (values only) */
    int ns = C->elbo_samples, used = 0;
    double s1 = 0, s2 = 0;
    int S_keep = Q->S;
    Q->S = 1;
    for (int s = 0; s < ns; s++) {
        draw(Q, 0);
        double f = Q->f(Q->z, NULL, Q->model);
        for (int i = 0; i < Q->d; i++)
            f += 0.5 * Q->eps[i] * Q->eps[i];
        Q->n_eval += 1;
        if (!R_FINITE(f)) {
            s1 = R_NegInf;
            used++;
            break;
        }
        s1 += f;
        s2 += f * f;
        used++;
        if (s % 64 == 63) R_CheckUserInterrupt();
    }
    Q->S = S_keep;
    double mean = s1 / used, var = used > 1 ? (s2 - used * mean * mean) / (used - 1) : 0;
    R->elbo = mean + entropy(Q) - 0.5 * Q->d;
    R->elbo_se = R_FINITE(mean) ? sqrt(fmax(var, 0) / used) : R_PosInf;
    R->eta = eta;
    R->iterations = it;
    R->converged = converged;
}

static void sgvb_alloc(sgvb *Q, int d, int fullrank, int score, int S, int baseline, int stl,
                       int Smax) {
    Q->d = d;
    Q->stl = stl;
    Q->fullrank = fullrank;
    Q->score = score;
    Q->S = S;
    Q->baseline = baseline;
    Q->P = npar(d, fullrank);
    Q->mu = (double *)R_alloc(d, sizeof(double));
    Q->L = (double *)R_alloc((size_t)d * d, sizeof(double));
    Q->eps = (double *)R_alloc((size_t)Smax * d, sizeof(double));
    Q->z = (double *)R_alloc((size_t)Smax * d, sizeof(double));
    Q->gf = (double *)R_alloc((size_t)Smax * d, sizeof(double));
    Q->u = (double *)R_alloc(d, sizeof(double));
    Q->fz = (double *)R_alloc(Smax, sizeof(double));
    Q->gacc = (double *)R_alloc(Q->P, sizeof(double));
    Q->ema = 0;
    Q->ema_set = 0;
    Q->n_grad = Q->n_eval = 0;
    Q->pre = NULL;
    Q->ustep = (double *)R_alloc(d, sizeof(double));
    Q->tw = 0;
    Q->Lt = (double *)R_alloc((size_t)d * d, sizeof(double));
    Q->aw = (double *)R_alloc(d, sizeof(double));
}

/* Checks mu0 (d) and L0 (d x d, lower triangle, positive diagonal). */
static void check_q(SEXP mu, SEXP L, int d) {
    if (!Rf_isReal(mu) || Rf_length(mu) != d)
        Rf_error("'mu' must be a double vector of length %d", d);
    if (!Rf_isReal(L) || !Rf_isMatrix(L) || Rf_nrows(L) != d || Rf_ncols(L) != d)
        Rf_error("'L' must be a %d x %d double matrix", d, d);
    for (int i = 0; i < d; i++) {
        if (!R_FINITE(REAL(mu)[i])) Rf_error("'mu' must be finite");
        if (!(REAL(L)[i + (size_t)i * d] > 0) || !R_FINITE(REAL(L)[i + (size_t)i * d]))
            Rf_error("the diagonal of 'L' must be finite and positive");
        for (int j = 0; j < i; j++)
            if (!R_FINITE(REAL(L)[i + (size_t)j * d])) Rf_error("'L' must be finite");
    }
}

/*
 * control = c(maxit, tol, quiet, S, estimator (0 reparam, 1 score),
 *             fullrank (0/1), eta (<= 0: search), adapt_iter, window,
 *             decays, elbo_samples, baseline (0/1), stl (0/1), precision)
 */
SEXP C_sgvb_fit(SEXP model, SEXP mu0, SEXP L0, SEXP control, SEXP pre) {
    target T;
    target_setup(model, &T);
    int d = T.d;
    check_q(mu0, L0, d);
    if (!Rf_isReal(control) || Rf_length(control) != 14)
        Rf_error("'control' must be a double vector of length 14");
    const double *c = REAL(control);
    for (int i = 0; i < 14; i++)
        if (!R_FINITE(c[i]) || fabs(c[i]) > 1e9)
            Rf_error("'control' must be finite numbers below 1e9");
    run_control C;
    C.maxit = (int)c[0];
    C.tol = c[1];
    C.quiet = c[2] != 0;
    int S = (int)c[3], score = c[4] != 0, fullrank = c[5] != 0;
    C.eta = c[6];
    C.adapt_iter = (int)c[7];
    C.window = (int)c[8];
    C.decays = (int)c[9];
    C.elbo_samples = (int)c[10];
    int baseline = c[11] != 0, stl = c[12] != 0;
    C.prec = c[13];
    if (C.maxit < 1 || S < 1 || C.adapt_iter < 2 || C.window < 2 || C.decays < 0 ||
        C.elbo_samples < 2 || !(C.tol >= 0) || !(C.prec > 0))
        Rf_error("invalid SGVB control values");
    sgvb Q;
    sgvb_alloc(&Q, d, fullrank, score, S, baseline, stl, S);
    Q.f = T.f;
    Q.model = T.model;
    double *lam = (double *)R_alloc(Q.P, sizeof(double));
    if (pre != R_NilValue) {
        check_q(mu0, pre, d);
        Q.pre = REAL(pre);
        Q.tw = fullrank;
    }
    if (Q.tw) {
        /* start from Lt = pre^{-1} L0 */
        double one = 1.0, *Lt0 = (double *)R_alloc((size_t)d * d, sizeof(double));
        for (int j = 0; j < d; j++)
            for (int i = 0; i < d; i++)
                Lt0[i + (size_t)j * d] = i >= j ? REAL(L0)[i + (size_t)j * d] : 0;
        F77_CALL(dtrsm)
        ("L", "L", "N", "N", &d, &d, &one, Q.pre, &d, Lt0, &d FCONE FCONE FCONE FCONE);
        for (int j = 0; j < d; j++)
            if (!(Lt0[j + (size_t)j * d] > 0))
                Rf_error("internal error: non-positive whitened diagonal");
        pack(d, fullrank, REAL(mu0), Lt0, lam);
    } else
        pack(d, fullrank, REAL(mu0), REAL(L0), lam);
    run_result R;
    R.trace = (double *)R_alloc(C.maxit, sizeof(double));
    R.smooth = (double *)R_alloc(C.maxit / C.window + 1, sizeof(double));
    GetRNGstate();
    run(&Q, &C, lam, &R);
    PutRNGstate();

    const char *nms[] = {"mu",  "L",          "elbo",      "elbo_se", "trace",  "smooth",
                         "eta", "iterations", "converged", "n_grad",  "n_eval", ""};
    SEXP out = PROTECT(Rf_mkNamed(VECSXP, nms));
    SEXP mu = Rf_allocVector(REALSXP, d);
    SET_VECTOR_ELT(out, 0, mu);
    memcpy(REAL(mu), Q.mu, sizeof(double) * d);
    SEXP L = Rf_allocMatrix(REALSXP, d, d);
    SET_VECTOR_ELT(out, 1, L);
    memcpy(REAL(L), Q.L, sizeof(double) * d * d);
    SET_VECTOR_ELT(out, 2, Rf_ScalarReal(R.elbo));
    SET_VECTOR_ELT(out, 3, Rf_ScalarReal(R.elbo_se));
    SEXP tr = Rf_allocVector(REALSXP, R.ntrace);
    SET_VECTOR_ELT(out, 4, tr);
    memcpy(REAL(tr), R.trace, sizeof(double) * R.ntrace);
    SEXP sm = Rf_allocVector(REALSXP, R.nsmooth);
    SET_VECTOR_ELT(out, 5, sm);
    memcpy(REAL(sm), R.smooth, sizeof(double) * R.nsmooth);
    SET_VECTOR_ELT(out, 6, Rf_ScalarReal(R.eta));
    SET_VECTOR_ELT(out, 7, Rf_ScalarInteger(R.iterations));
    SET_VECTOR_ELT(out, 8, Rf_ScalarLogical(R.converged));
    SET_VECTOR_ELT(out, 9, Rf_ScalarReal(Q.n_grad));
    SET_VECTOR_ELT(out, 10, Rf_ScalarReal(Q.n_eval));
    UNPROTECT(1);
    return out;
}

/*
 * Raw gradient estimates at a given q, for tests: nrep columns, each the
 * average of S draws (its ELBO estimate in attribute "elbo").
 * control = c(fullrank, estimator, S, nrep, baseline, stl).
 */
SEXP C_sgvb_grad(SEXP model, SEXP mu, SEXP L, SEXP control) {
    target T;
    target_setup(model, &T);
    int d = T.d;
    check_q(mu, L, d);
    if (!Rf_isReal(control) || Rf_length(control) != 6)
        Rf_error("'control' must be a double vector of length 6");
    const double *c = REAL(control);
    for (int i = 0; i < 6; i++)
        if (!R_FINITE(c[i]) || fabs(c[i]) > 1e9)
            Rf_error("'control' must be finite numbers below 1e9");
    int fullrank = c[0] != 0, score = c[1] != 0, S = (int)c[2], nrep = (int)c[3],
        baseline = c[4] != 0, stl = c[5] != 0;
    if (S < 1 || nrep < 1) Rf_error("S and nrep must be positive");
    sgvb Q;
    sgvb_alloc(&Q, d, fullrank, score, S, baseline, stl, S);
    Q.f = T.f;
    Q.model = T.model;
    double *lam = (double *)R_alloc(Q.P, sizeof(double));
    pack(d, fullrank, REAL(mu), REAL(L), lam);
    unpack(&Q, lam);
    SEXP out = PROTECT(Rf_allocMatrix(REALSXP, Q.P, nrep));
    SEXP el = PROTECT(Rf_allocVector(REALSXP, nrep));
    GetRNGstate();
    for (int r = 0; r < nrep; r++) {
        REAL(el)[r] = estimate(&Q);
        memcpy(REAL(out) + (size_t)r * Q.P, Q.gacc, sizeof(double) * Q.P);
        if (r % 256 == 255) R_CheckUserInterrupt();
    }
    PutRNGstate();
    Rf_setAttrib(out, Rf_install("elbo"), el);
    UNPROTECT(2);
    return out;
}
