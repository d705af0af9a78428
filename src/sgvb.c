/*
 * sgvb.c — the stochastic-gradient variational Bayes engine, over the
 * log-joint contract (vbayes.h; the targets are in sgvb_targets.c).
 *
 * Model: any log p(y, theta), theta in R^d, reached through a vb_target.
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
 *            2017, the default for fullrank q), a = grad f(theta) + L^{-T} eps, the path
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
 * gets worse, as ADVI does); the run continues from the best trial.  When q
 * starts at the Laplace approximation (opts$laplace_start) there is no
 * search: the run starts at eta_final (below), as trial steps of up to one
 * posterior sd would first move q away from a start that is already close
 * (and in whitened coordinates, eta_final steps still cross several sds in
 * a few hundred steps where the Laplace start is off).
 * The ELBO is estimated per step by the mean of f - log q over the draws (its
 * noise vanishes as q approaches the posterior).  The run is cut into windows
 * of `window` steps; the smoothed ELBO is the window mean.  A window "stalls"
 * when the smoothed ELBO's relative change is below tol or its change lies
 * within two standard errors.  A stall halves eta, restarts from the window's
 * average of lambda and clears Adam's moments, until at least `decays`
 * halvings are done and eta <= eta_final = min(ETA_FINAL, 0.1/sqrt(P)) (the
 * searched eta is raised to eta_final if below); the next stall starts the
 * final phase, which averages the window means of lambda (Polyak averaging)
 * and stops at a stall after at least three windows when the batch-means
 * standard error of every location and log-scale is below `prec` (in
 * posterior sds for locations, log units for scales).
 * maxit caps the number of steps.  The returned q is that average; its ELBO
 * is estimated from at most elbo_samples fresh draws, in blocks of 100 until
 * its standard error is at most opts$elbo_se, unless opts$final_elbo is
 * FALSE (a caller with a closed-form ELBO, such as the GLMs).
 *
 * Newton mode (opts$newton, needs Lpre; the GLMs of vb(method = "sgvb")):
 * no Adam and no search.  Each step is the gradient estimate itself times
 * eta (1 unless control$step_size is set; 1/2 for the log-diagonals, whose
 * curvature is 2 at the optimum) in the whitened coordinates, where the
 * curvature of the start is the identity: for a posterior whose curvature
 * is that of the start, a Newton step.  A window whose smoothed ELBO fell
 * by more than two standard errors (and tol relative) halves eta and
 * restarts from the previous window's average (leaving the final phase if
 * it had started); the first stall with the ELBO no longer rising starts
 * the final phase (no halvings are required: the steps' jitter is the
 * gradient noise, which the control variates make small, not Adam's
 * eta-sized one).  opts$window sets the window (the GLMs use
 * max(5, control$window / 20) steps).
 * Control variates (opts$control_variate, needs Lpre and reparam): with
 * H = (Lpre Lpre')^{-1}, each draw's gradient gets + H v and its ELBO term
 * + v'Hv/2 (v = theta - mu), their expectations (0; H L for the scale
 * gradient, tr(L'HL)/2 for the ELBO) taken back in closed form (cv_draw,
 * cv_mean): the quadratic model of f at mu is integrated exactly, only the
 * remainder is sampled.  It replaces stl.  At a Gaussian target of
 * precision H both gradient and ELBO estimates are exact at the optimum.
 *
 * Non-finite draws: a step whose draw has a non-finite log density (or
 * gradient) is skipped; SGVB_MAX_BAD consecutive ones end the run.  A
 * convergence claim needs a finite ELBO: the status is VB_NONFINITE, not
 * VB_OK, when a draw of the final phase or of the final ELBO estimate was not
 * finite (q then puts mass where the log density is -Inf or undefined, and
 * the ELBO of q is -Inf or undefined; it is reported as estimated).
 *
 * Status (the worker's return): VB_OK (the criterion above), VB_MAXIT,
 * VB_NONFINITE, VB_INTERRUPTED (Ctrl-C, polled every step), or the target's
 * own failure (VB_BAD_INPUT: the R closure raised an error).  The worker never
 * raises an R error, so the entry point always restores the RNG.
 *
 * Inputs: model list (sgvb_targets.c), mu0 (d), L0 (d x d, lower triangle
 * used), Lpre (d x d lower, or NULL), the vb_control() list (read by name:
 * sgvb_maxit, sgvb_tol, quiet, step_size, adapt_iter, window, step_decays,
 * elbo_samples, baseline, stl, precision) and opts = list(fullrank, score,
 * samples [, laplace_start, final_elbo, elbo_se, newton, window,
 * control_variate]).
 * Outputs: mu, L, elbo, elbo_se, trace (per-step ELBO estimates), smooth
 * (window means), eta, iterations, status, converged, n_grad, n_eval,
 * n_nonfinite (skipped draws), error (the R closure's condition or NULL).
 * Cost per step: S evaluations of log p and its gradient plus O(S d^2)
 * (fullrank: triangular products with L, or with pre and Lt, never L = pre
 * Lt itself, which is formed once per window) or O(S d) (meanfield, whose
 * L is its diagonal; with a dense pre the whitened locations add two
 * triangular products, O(d^2)); memory O(d^2 + S d + iterations).
 */
#include "vbayes.h"
#include <time.h>

/* Halvings continue until eta is at most min(this, 0.1 / sqrt(P)): with
 * Adam's normalised steps the stationary jitter is of order eta posterior sds
 * per parameter, which the final averaging removes; much smaller steps would
 * only slow that averaging. */
#define ETA_FINAL 0.0301
/* Windows (at the current step size) over which the trend of the smoothed
 * ELBO is tested before averaging starts and before the run stops. */
#define TREND_K 5
/* Consecutive steps with a non-finite draw that end the run (VB_NONFINITE). */
#define SGVB_MAX_BAD 100
/* The largest dimension the entry points accept (q stores d x d factors). */
#define SGVB_MAX_D 10000

/* --------------------------------------------------------- progress -- */

/* Progress lines go through R's message(), so suppressMessages() silences
 * them (quiet turns them off).  message() is evaluated under R_tryCatch, which
 * keeps the calling handlers of the caller (suppressMessages) but catches an
 * error or interrupt, so nothing longjmps through the engine; at most one line
 * every vbayes.progress_interval CPU seconds (1 by default). */
static SEXP progress_body(void *data) {
    SEXP call = PROTECT(Rf_lang2(Rf_install("message"), Rf_mkString((const char *)data)));
    Rf_eval(call, R_BaseEnv);
    UNPROTECT(1);
    return R_NilValue;
}

static SEXP progress_handler(SEXP cond, void *data) {
    (void)cond;
    (void)data;
    return R_NilValue;
}

static void progress(vb_progress *pr, const char *what, int it, double elbo) {
    if (pr->quiet) return;
    double now = (double)clock() / CLOCKS_PER_SEC;
    if (now - pr->last < pr->every) return; /* vbayes.progress_interval */
    pr->last = now;
    char buf[160];
    snprintf(buf, sizeof buf, "%s: step %d, ELBO %.6g", what, it, elbo);
    SEXP conds = PROTECT(Rf_allocVector(STRSXP, 2));
    SET_STRING_ELT(conds, 0, Rf_mkChar("error"));
    SET_STRING_ELT(conds, 1, Rf_mkChar("interrupt"));
    R_tryCatch(progress_body, buf, conds, progress_handler, NULL, NULL, NULL);
    UNPROTECT(1);
}

/* ----------------------------------------------- q and its estimators -- */

typedef struct {
    vb_log_joint f;
    void *model;
    const int *tstatus; /* the target's failure status, or NULL */
    int d, P, fullrank, score, S, baseline, stl;
    double *mu, *L;           /* current q (L: see form_L)              */
    double *ld;               /* meanfield: the diagonal of L (d)       */
    double *eps, *z, *gf, *u; /* S x d draws, gradients; d scratch      */
    double *fz, *gacc;        /* S values; P accumulated gradient       */
    double ema;               /* S = 1 score baseline                   */
    int ema_set;
    double n_grad, n_eval;
    const double *pre; /* optional d x d lower preconditioner of the locations */
    double *ustep;
    int tw;          /* fullrank with pre: L = pre Lt, Lt parameterised     */
    double *Lt, *aw; /* d x d, d                                             */
    int newton;      /* preconditioned SGD steps (see the contract)          */
    double *nsc;     /* newton: per-parameter step factor, P                 */
    int cv;          /* control variates (cv_draw)                           */
    double *H;       /* meanfield cv: H = (pre pre')^{-1}, d x d             */
    double *hv, cvq; /* d scratch; v'Hv of the current draw                  */
} sgvb;

static int npar(int d, int fullrank) {
    return d + (fullrank ? d * (d + 1) / 2 : d);
}

/* lambda -> q's factors, O(d) meanfield (the diagonal ld) and O(d^2)
 * fullrank (the lower triangle of L, or of Lt when L = pre Lt; upper
 * triangles stay zero from the allocation).  The dense L of a whitened or
 * mean-field q is formed only where it is reported (form_L). */
static void unpack(sgvb *Q, const double *lam) {
    int d = Q->d, k = d;
    memcpy(Q->mu, lam, sizeof(double) * d);
    if (!Q->fullrank) {
        for (int j = 0; j < d; j++)
            Q->ld[j] = exp(lam[k++]);
        return;
    }
    double *T = Q->tw ? Q->Lt : Q->L;
    for (int j = 0; j < d; j++)
        for (int i = j; i < d; i++, k++)
            T[i + (size_t)j * d] = i == j ? exp(lam[k]) : lam[k];
}

/* The dense L of the current q in Q->L: O(d^3) (a dtrmm) when L = pre Lt,
 * so called once per window at most, never per step. */
static void form_L(sgvb *Q) {
    int d = Q->d;
    if (!Q->fullrank) {
        memset(Q->L, 0, sizeof(double) * (size_t)d * d);
        for (int j = 0; j < d; j++)
            Q->L[j + (size_t)j * d] = Q->ld[j];
        return;
    }
    if (!Q->tw) return;
    double one = 1.0;
    memcpy(Q->L, Q->Lt, sizeof(double) * (size_t)d * d);
    F77_CALL(dtrmm)
    ("L", "L", "N", "N", &d, &d, &one, Q->pre, &d, Q->L, &d FCONE FCONE FCONE FCONE);
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
    int d = Q->d;
    double h = 0.5 * d * (1.0 + VB_LOG2PI);
    if (!Q->fullrank) {
        for (int j = 0; j < d; j++)
            h += log(Q->ld[j]);
        return h;
    }
    /* diag(pre Lt) = diag(pre) diag(Lt): both triangular */
    const double *T = Q->tw ? Q->Lt : Q->L;
    for (int j = 0; j < d; j++)
        h += log(T[j + (size_t)j * d]);
    if (Q->tw)
        for (int j = 0; j < d; j++)
            h += log(Q->pre[j + (size_t)j * d]);
    return h;
}

/* theta = mu + L eps for column s: O(d) meanfield, O(d^2) fullrank (with
 * L = pre Lt, two triangular products, never L itself) */
static void draw(sgvb *Q, int s) {
    int d = Q->d, one = 1;
    double *e = Q->eps + (size_t)s * d, *z = Q->z + (size_t)s * d;
    for (int i = 0; i < d; i++)
        e[i] = norm_rand();
    if (!Q->fullrank) {
        for (int i = 0; i < d; i++)
            z[i] = Q->mu[i] + Q->ld[i] * e[i];
        return;
    }
    memcpy(z, e, sizeof(double) * d);
    F77_CALL(dtrmv)("L", "N", "N", &d, Q->tw ? Q->Lt : Q->L, &d, z, &one FCONE FCONE FCONE);
    if (Q->tw) F77_CALL(dtrmv)("L", "N", "N", &d, Q->pre, &d, z, &one FCONE FCONE FCONE);
    for (int i = 0; i < d; i++)
        z[i] += Q->mu[i];
}

/* Adds w * (per-draw vector a over mu, L entries given eps) to acc: entries
 * a_i for mu, a_i eps_j for L_ij, a_j eps_j L_jj for log L_jj. */
static void add_outer(sgvb *Q, const double *a, const double *e, double w, double *acc) {
    int d = Q->d, k = d;
    for (int i = 0; i < d; i++)
        acc[i] += w * a[i];
    const double *Ld = Q->L;
    if (!Q->fullrank) {
        for (int j = 0; j < d; j++)
            acc[k++] += w * a[j] * e[j] * Q->ld[j];
        return;
    }
    if (Q->tw) {
        /* L = pre Lt: d/dLt = tril(pre' (d/dL)), and d/dL = a e' */
        int one = 1;
        memcpy(Q->aw, a, sizeof(double) * d);
        F77_CALL(dtrmv)("L", "T", "N", &d, Q->pre, &d, Q->aw, &one FCONE FCONE FCONE);
        a = Q->aw;
        Ld = Q->Lt;
    }
    for (int j = 0; j < d; j++)
        for (int i = j; i < d; i++, k++)
            acc[k] += w * a[i] * e[j] * (i == j ? Ld[j + (size_t)j * d] : 1.0);
}

/* u = L^{-T} e; with L = pre Lt, L^{-T} = pre^{-T} Lt^{-T} (two solves) */
static void inv_lt(const sgvb *Q, const double *e, double *u) {
    int d = Q->d, one = 1;
    memcpy(u, e, sizeof(double) * d);
    if (!Q->fullrank) {
        for (int i = 0; i < d; i++)
            u[i] /= Q->ld[i];
        return;
    }
    F77_CALL(dtrsv)("L", "T", "N", &d, Q->tw ? Q->Lt : Q->L, &d, u, &one FCONE FCONE FCONE);
    if (Q->tw) F77_CALL(dtrsv)("L", "T", "N", &d, Q->pre, &d, u, &one FCONE FCONE FCONE);
}
/*
 * The control variate of a draw (opts$control_variate): the quadratic model
 * -v'Hv/2 of f around mu, v = theta - mu = L eps, H = (pre pre')^{-1} the
 * curvature the preconditioner came from.  Its gradient -Hv is taken off the
 * draw's gradient (g += Hv), its value off the ELBO estimate (Q->cvq = v'Hv);
 * cv_mean() puts their expectations back.  Fullrank (L = pre Lt): Hv =
 * pre^{-T} Lt eps and v'Hv = |Lt eps|^2, O(d^2); meanfield: v = ld eps and
 * Hv by dsymv with the explicit H.  For a Gaussian target of precision H the
 * location gradient is then exact and the scale gradient's noise is the
 * location error times eps, so both vanish at the optimum.
 */
static void cv_draw(sgvb *Q, const double *e, double *g) {
    int d = Q->d, one = 1;
    double q = 0;
    if (Q->fullrank) {
        memcpy(Q->u, e, sizeof(double) * d);
        F77_CALL(dtrmv)("L", "N", "N", &d, Q->Lt, &d, Q->u, &one FCONE FCONE FCONE);
        for (int i = 0; i < d; i++)
            q += Q->u[i] * Q->u[i];
        memcpy(Q->hv, Q->u, sizeof(double) * d);
        F77_CALL(dtrsv)("L", "T", "N", &d, Q->pre, &d, Q->hv, &one FCONE FCONE FCONE);
    } else {
        double done = 1.0, dzero = 0.0;
        for (int i = 0; i < d; i++)
            Q->u[i] = Q->ld[i] * e[i];
        F77_CALL(dsymv)("L", &d, &done, Q->H, &d, Q->u, &one, &dzero, Q->hv, &one FCONE);
        for (int i = 0; i < d; i++)
            q += Q->u[i] * Q->hv[i];
    }
    Q->cvq = q;
    if (g)
        for (int i = 0; i < d; i++)
            g[i] += Q->hv[i];
}

/* The expectations of the control variates at the current q: returns
 * E[v'Hv]/2 = tr(L'HL)/2 and subtracts E[(Hv) eps'] = HL from the scale
 * gradients in Q->gacc (fullrank: pre' H pre = I, so d/dLt gets -Lt; the
 * location gradient needs nothing, E[Hv] = 0).  O(d^2) fullrank, O(d)
 * meanfield. */
static double cv_mean(sgvb *Q) {
    int d = Q->d, k = d;
    double tr = 0;
    for (int j = 0; j < d; j++) {
        if (!Q->fullrank) {
            double c = Q->H[j + (size_t)j * d] * Q->ld[j] * Q->ld[j];
            tr += c;
            Q->gacc[k++] -= c;
            continue;
        }
        for (int i = j; i < d; i++, k++) {
            double l = Q->Lt[i + (size_t)j * d];
            tr += l * l;
            Q->gacc[k] -= i == j ? l * l : l;
        }
    }
    return 0.5 * tr;
}

/* A status that ends the run at once: anything but VB_OK and a skipped draw. */
static int hard_status(int st) {
    return st != VB_OK && st != VB_NONFINITE;
}

/*
 * One stochastic gradient of the ELBO at the current q, S draws, into Q->gacc
 * (length P), and the Monte Carlo ELBO estimate in *elbo.  Returns VB_OK;
 * VB_NONFINITE when a draw had a non-finite log density or gradient (the
 * remaining draws of the step are not made); or the target's failure status.
 */
static int estimate(sgvb *Q, double *elbo) {
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
        if (Q->tstatus && *Q->tstatus != VB_OK) return *Q->tstatus;
        if (!R_FINITE(Q->fz[s])) return VB_NONFINITE;
        if (g)
            for (int i = 0; i < d; i++)
                if (!R_FINITE(g[i])) return VB_NONFINITE;
        fsum += Q->fz[s];
        double *e = Q->eps + (size_t)s * d;
        if (Q->cv) {
            cv_draw(Q, e, g);
            esum += 0.5 * Q->cvq;
            continue;
        }
        /* -log q(theta) = sum log L_jj + d/2 log 2 pi + |eps|^2 / 2: estimating
         * the ELBO by f - log q (not f + exact entropy) makes its noise vanish
         * as q approaches the posterior, which sharpens the stall test */
        for (int i = 0; i < d; i++)
            esum += 0.5 * e[i] * e[i];
    }
    if (Q->cv)
        *elbo = (fsum + esum) / S - cv_mean(Q) + entropy(Q);
    else
        *elbo = (fsum + esum) / S + entropy(Q) - 0.5 * d;
    if (!Q->score && Q->stl) {
        /* path derivative of f - log q: a = grad f(theta) + L^{-T} eps */
        for (int s = 0; s < S; s++) {
            double *e = Q->eps + (size_t)s * d, *g = Q->gf + (size_t)s * d;
            inv_lt(Q, e, Q->u);
            for (int i = 0; i < d; i++)
                Q->u[i] += g[i];
            add_outer(Q, Q->u, e, 1.0 / S, Q->gacc);
        }
        return VB_OK;
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
    return VB_OK;
}

/* Marginal sds of q, sd_i = the norm of row i of L: O(d) meanfield, O(d^2)
 * fullrank once L is formed (form_L). */
static void q_sd(const sgvb *Q, double *sd) {
    int d = Q->d;
    if (!Q->fullrank) {
        memcpy(sd, Q->ld, sizeof(double) * d);
        return;
    }
    for (int i = 0; i < d; i++)
        sd[i] = 0;
    for (int j = 0; j < d; j++)
        for (int i = j; i < d; i++)
            sd[i] += Q->L[i + (size_t)j * d] * Q->L[i + (size_t)j * d];
    for (int i = 0; i < d; i++)
        sd[i] = sqrt(sd[i]);
}

/* Per-parameter step scale: 1 for log L_jj, for whitened locations and for
 * the entries of Lt; else sd_i for mu_i and L_ij.  Needs L only for a
 * fullrank q without pre (where Q->L is the parameter itself). */
static void step_scale(const sgvb *Q, double *sc) {
    int d = Q->d, k = d;
    if (Q->pre)
        for (int i = 0; i < d; i++)
            sc[i] = 1.0;
    else
        q_sd(Q, sc);
    for (int j = 0; j < d; j++) {
        if (!Q->fullrank) {
            sc[k++] = 1.0;
            continue;
        }
        for (int i = j; i < d; i++, k++)
            sc[k] = i == j || Q->tw ? 1.0 : sc[i];
    }
}

/* ------------------------------------------------------------- Adam -- */

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

/* Forget the moments: gradients near the optimum are far smaller than those
 * that filled v on the way there, and a stale v would freeze the iterate. */
static void adam_reset(adam *A, int P) {
    memset(A->m, 0, sizeof(double) * P);
    memset(A->v, 0, sizeof(double) * P);
    A->t = 0;
}

/* One Adam step on A->lam, the ELBO estimate in *elbo.  Returns estimate()'s
 * status; lambda moves only on VB_OK (a non-finite draw skips the step). */
static int adam_step(sgvb *Q, adam *A, double eta, double *elbo) {
    unpack(Q, A->lam);
    int st = estimate(Q, elbo);
    if (st != VB_OK) return st;
    step_scale(Q, A->sc);
    int d = Q->d, one = 1;
    if (Q->pre) {
        /* locations in whitened coordinates u, mu = mu0 + Lpre u: gradient
         * Lpre' g, step Lpre du */
        F77_CALL(dtrmv)("L", "T", "N", &d, Q->pre, &d, Q->gacc, &one FCONE FCONE FCONE);
    }
    A->t += 1;
    double c1 = 1.0 - pow(0.9, A->t), c2 = 1.0 - pow(0.999, A->t);
    for (int k = 0; k < Q->P; k++) {
        double g = Q->gacc[k], step;
        if (Q->newton) {
            /* the gradient itself, in coordinates whose curvature is about
             * the identity (whitened locations, Lt) or 2 (log-diagonals) */
            step = eta * Q->nsc[k] * g;
        } else {
            A->m[k] = 0.9 * A->m[k] + 0.1 * g;
            A->v[k] = 0.999 * A->v[k] + 0.001 * g * g;
            step = eta * A->sc[k] * (A->m[k] / c1) / (sqrt(A->v[k] / c2) + 1e-8);
        }
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
    return VB_OK;
}

/* ---------------------------------------------------- step-size search -- */

/* Runs n steps at eta; *value is the mean ELBO estimate over the second half
 * (-Inf when the iterate diverged or more than half the draws were not
 * finite).  Returns VB_OK, or a status that ends the run. */
static int trial(sgvb *Q, adam *A, double eta, int n, double *value) {
    double sum = 0;
    int cnt = 0, bad = 0;
    *value = R_NegInf;
    for (int it = 0; it < n; it++) {
        if (vb_interrupted()) return VB_INTERRUPTED;
        double e;
        int st = adam_step(Q, A, eta, &e);
        if (hard_status(st)) return st;
        if (st == VB_NONFINITE) {
            if (++bad > n / 2) return VB_OK;
            continue;
        }
        for (int k = 0; k < Q->P; k++)
            if (!R_FINITE(A->lam[k])) return VB_OK;
        if (it >= n / 2) {
            sum += e;
            cnt++;
        }
    }
    if (cnt) *value = sum / cnt;
    return VB_OK;
}

/* ADVI-style search over a grid, largest first, stopping when a trial gets
 * worse; A continues from the best trial.  Returns VB_OK with *eta, or
 * VB_NONFINITE (every trial diverged), or a status that ends the run. */
static int search_eta(sgvb *Q, adam *A, int adapt_iter, vb_progress *pr, double *eta) {
    static const double grid[] = {1.0, 0.3, 0.1, 0.03, 0.01, 0.003};
    int P = Q->P;
    adam best, tmp;
    adam_init(&best, P);
    adam_init(&tmp, P);
    double bestv = R_NegInf, prevv = R_NegInf;
    *eta = grid[5];
    for (int gi = 0; gi < 6; gi++) {
        adam_copy(&tmp, A, P);
        double v;
        int st = trial(Q, &tmp, grid[gi], adapt_iter, &v);
        if (st != VB_OK) return st;
        progress(pr, "sgvb step-size search", gi + 1, v);
        if (v > bestv) {
            bestv = v;
            *eta = grid[gi];
            adam_copy(&best, &tmp, P);
        }
        if (R_FINITE(prevv) && v < prevv) break;
        prevv = v;
    }
    if (!R_FINITE(bestv)) return VB_NONFINITE;
    adam_copy(A, &best, P);
    return VB_OK;
}

/* ------------------------------------------------- windows and phases -- */

typedef struct {
    int P, d, fullrank;
    int *isdiag;     /* P: 1 at the log-diagonals of L             */
    double *avg;     /* window sum of lambda                        */
    double *pavg;    /* the previous window's average (newton)      */
    double *is, *iq; /* newton, final phase: sums of the iterates   */
    int in;          /* and of their squares, and their count       */
    int newton;
    double *bs, *bq;  /* final phase: sum and sum of squares of the  */
    double *sc;       /* window means; step scales                   */
    double wsum, wss; /* window sums of the ELBO estimates           */
    double prev_mean, prev_se;
    int wn, nb, final, decays, bad_final;
    double tm[TREND_K], tse[TREND_K]; /* window means and ses at the current eta */
    int nt;
} windows;

static void windows_init(windows *W, const sgvb *Q) {
    int P = Q->P, d = Q->d;
    W->P = P;
    W->d = d;
    W->fullrank = Q->fullrank;
    W->isdiag = (int *)R_alloc(P, sizeof(int));
    memset(W->isdiag, 0, sizeof(int) * P);
    for (int j = 0, k = d; j < d; j++) {
        W->isdiag[k] = 1;
        k += Q->fullrank ? d - j : 1;
    }
    W->avg = (double *)R_alloc(P, sizeof(double));
    W->pavg = (double *)R_alloc(P, sizeof(double));
    W->is = (double *)R_alloc(P, sizeof(double));
    W->iq = (double *)R_alloc(P, sizeof(double));
    memset(W->is, 0, sizeof(double) * P);
    memset(W->iq, 0, sizeof(double) * P);
    W->in = 0;
    W->newton = Q->newton;
    W->bs = (double *)R_alloc(P, sizeof(double));
    W->bq = (double *)R_alloc(P, sizeof(double));
    W->sc = (double *)R_alloc(P, sizeof(double));
    memset(W->avg, 0, sizeof(double) * P);
    memset(W->bs, 0, sizeof(double) * P);
    memset(W->bq, 0, sizeof(double) * P);
    W->wsum = W->wss = 0;
    W->prev_mean = R_NaN;
    W->prev_se = 0;
    W->wn = W->nb = W->final = W->decays = W->bad_final = 0;
    W->nt = 0;
}

static void trend_push(windows *W, double mean, double se) {
    if (W->nt == TREND_K) {
        memmove(W->tm, W->tm + 1, sizeof(double) * (TREND_K - 1));
        memmove(W->tse, W->tse + 1, sizeof(double) * (TREND_K - 1));
        W->nt--;
    }
    W->tm[W->nt] = mean;
    W->tse[W->nt] = se;
    W->nt++;
}

/* Is the smoothed ELBO still rising?  The least-squares slope over the last
 * (up to TREND_K, at least 3) window means at the current step size, against
 * its standard error from the windows' own standard errors: rising when the
 * slope exceeds two standard errors and the rise over the span exceeds tol
 * relative.  Fewer than 3 windows count as rising (not yet known). */
static int still_rising(const windows *W, double tol) {
    int n = W->nt;
    if (n < 3) return 1;
    double xb = 0.5 * (n - 1), mb = 0, sxx = 0, sxy = 0, v = 0;
    for (int i = 0; i < n; i++)
        mb += W->tm[i] / n;
    for (int i = 0; i < n; i++) {
        double dx = i - xb;
        sxx += dx * dx;
        sxy += dx * (W->tm[i] - mb);
    }
    for (int i = 0; i < n; i++) {
        double dx = i - xb;
        v += dx * dx * W->tse[i] * W->tse[i];
    }
    double b = sxy / sxx, sb = sqrt(v) / sxx;
    return b > 2.0 * sb && b * (n - 1) > tol * fabs(mb);
}

static void window_add(windows *W, double e, const double *lam) {
    W->wsum += e;
    W->wss += e * e;
    W->wn++;
    for (int k = 0; k < W->P; k++)
        W->avg[k] += lam[k];
    if (W->newton && W->final) {
        for (int k = 0; k < W->P; k++) {
            W->is[k] += lam[k];
            W->iq[k] += lam[k] * lam[k];
        }
        W->in++;
    }
}

/* Final phase: is the average of lambda known to prec posterior sds (log
 * units for scales)?  Batch means of the window averages; locations and
 * log-diagonals only (the many off-diagonals of a fullrank L move the ELBO
 * little and would dominate). */
static int averaged_enough(windows *W, sgvb *Q, const double *lam, double prec, double eta) {
    unpack(Q, lam);
    form_L(Q);
    step_scale(Q, W->sc);
    q_sd(Q, W->sc);
    if (Q->pre && !Q->newton) {
        /* (the Newton mode's control variates make its noise small enough
         * to measure the locations in q's own sds, which is what a
         * comparison of means in posterior sds sees)
         * locations move in the whitened coordinates of pre: their precision
         * is measured in its marginal sds (a mean-field q's own sds are
         * smaller by the posterior correlations, and would demand averaging
         * far beyond what the ELBO can see) */
        int d = Q->d;
        for (int i = 0; i < d; i++) {
            double ss = 0;
            for (int j = 0; j <= i; j++)
                ss += Q->pre[i + (size_t)j * d] * Q->pre[i + (size_t)j * d];
            if (ss > W->sc[i] * W->sc[i]) W->sc[i] = sqrt(ss);
        }
    }
    double worst = 0;
    int nb = W->nb;
    for (int k = 0; k < W->P; k++) {
        if (W->fullrank && k >= W->d && !W->isdiag[k]) continue;
        double m = W->bs[k] / nb, v = fmax((W->bq[k] - nb * m * m) / (nb - 1), 0);
        double se = sqrt(v / nb);
        if (W->newton && W->in > 1) {
            /* a few short batches can agree by chance: the standard error
             * of the mean of (nearly independent) Newton iterates bounds it
             * from below */
            int ni = W->in;
            double mi = W->is[k] / ni, vi = fmax((W->iq[k] - ni * mi * mi) / (ni - 1), 0);
            /* a step of a = eta nsc_k on a quadratic of matched curvature
             * makes the iterates AR(1) with coefficient 1 - a: the variance
             * of their mean is (2 - a) / a times the independent one */
            double a = fmin(eta * Q->nsc[k], 1.0);
            se = fmax(se, sqrt(vi / ni * (2.0 - a) / a));
        }
        double r = se / W->sc[k];
        if (r > worst) worst = r;
    }
    return worst <= prec;
}

typedef struct {
    int maxit, adapt_iter, window, decays, elbo_samples, quiet;
    int newton;            /* preconditioned SGD, eta 1, decreases halve eta (opts$newton) */
    double tol, eta, prec; /* eta <= 0: search (or eta_start) */
    int laplace_start;     /* q starts at the Laplace approximation: no search */
    int final_elbo;        /* estimate the ELBO of the returned q */
    double elbo_se;        /* the final estimate stops once its se is below this */
} sgvb_settings;

/*
 * Closes a full window: its mean joins the smoothed trace; a stall halves eta
 * (restarting from the window's average of lambda), or starts the final
 * phase, or in the final phase may end the run.  Returns 1 when the run is to
 * stop (converged), else 0.
 */
static int window_close(windows *W, sgvb *Q, adam *A, const sgvb_settings *C, double eta_final,
                        double *eta, vb_trace *smooth) {
    int P = W->P, wn = W->wn, done = 0;
    double mean = W->wsum / wn, var = (W->wss - wn * mean * mean) / (wn - 1);
    double se = sqrt(fmax(var, 0) / wn);
    vb_trace_push(smooth, mean);
    int stall = 0;
    if (R_FINITE(W->prev_mean)) {
        double ch = mean - W->prev_mean;
        stall =
            fabs(ch) <= C->tol * fabs(mean) || ch <= 2.0 * sqrt(se * se + W->prev_se * W->prev_se);
    }
    for (int k = 0; k < P; k++)
        W->avg[k] /= wn;
    if (C->newton && R_FINITE(W->prev_mean)) {
        double ch = mean - W->prev_mean;
        if (ch < -2.0 * sqrt(se * se + W->prev_se * W->prev_se) && -ch > C->tol * fabs(mean)) {
            /* the smoothed ELBO fell: the step overshoots (the curvature at
             * the start understates the posterior's); halve it and restart
             * from the better window, whose mean stays the reference */
            *eta *= 0.5;
            W->decays++;
            memcpy(A->lam, W->pavg, sizeof(double) * P);
            adam_reset(A, P);
            W->nt = 0;
            if (W->final) {
                W->final = 0;
                W->nb = W->in = 0;
                memset(W->bs, 0, sizeof(double) * P);
                memset(W->bq, 0, sizeof(double) * P);
                memset(W->is, 0, sizeof(double) * P);
                memset(W->iq, 0, sizeof(double) * P);
            }
            W->wsum = W->wss = 0;
            W->wn = 0;
            memset(W->avg, 0, sizeof(double) * P);
            return 0;
        }
    }
    trend_push(W, mean, se);
    if (!W->final) {
        if (stall && *eta <= eta_final && W->decays >= C->decays) {
            /* averaging starts with the next window, once the ELBO has
             * stopped rising at this step size */
            if (!still_rising(W, C->tol)) {
                W->final = 1;
                W->nt = 0;
            }
        } else if (stall) {
            W->decays++;
            *eta *= 0.5;
            memcpy(A->lam, W->avg, sizeof(double) * P);
            adam_reset(A, P);
            W->nt = 0;
        }
    } else {
        for (int k = 0; k < P; k++) {
            W->bs[k] += W->avg[k];
            W->bq[k] += W->avg[k] * W->avg[k];
        }
        W->nb++;
        done = W->nb >= 3 && stall && !still_rising(W, C->tol) &&
               averaged_enough(W, Q, A->lam, C->prec, *eta);
    }
    W->prev_mean = mean;
    W->prev_se = se;
    memcpy(W->pavg, W->avg, sizeof(double) * P);
    W->wsum = W->wss = 0;
    W->wn = 0;
    memset(W->avg, 0, sizeof(double) * P);
    return done;
}

/* ---------------------------------------------------------- the run -- */

typedef struct {
    double elbo, elbo_se, eta, n_nonfinite;
    int iterations, aborted, consecutive_bad, n_averaged, decays;
    vb_trace trace, smooth;
} run_result;

/*
 * ELBO of the current q from at most ns fresh draws (values only): mean of
 * f - log q and its standard error, stopping early (in blocks of 100 draws)
 * once that standard error is at most se_target.  A non-finite draw ends the estimate (the ELBO of
 * q is then -Inf or undefined, reported as that draw's value) and returns VB_NONFINITE.
 */
static int final_elbo(sgvb *Q, int ns, double se_target, double *elbo, double *se) {
    int used = 0, st = VB_OK, S_keep = Q->S;
    double s1 = 0, s2 = 0;
    Q->S = 1;
    for (int s = 0; s < ns; s++) {
        /* sequential: every 100 draws, stop once the standard error is
         * below se_target (near a Gaussian posterior f - log q is almost
         * constant and 100 draws pin the ELBO down) */
        if (used >= 100 && used % 100 == 0 && se_target > 0) {
            double m = s1 / used, v = (s2 - used * m * m) / (used - 1);
            if (sqrt(fmax(v, 0) / used) <= se_target) break;
        }
        if (vb_interrupted()) {
            st = VB_INTERRUPTED;
            break;
        }
        draw(Q, 0);
        double f = Q->f(Q->z, NULL, Q->model);
        Q->n_eval += 1;
        if (Q->tstatus && *Q->tstatus != VB_OK) {
            st = *Q->tstatus;
            break;
        }
        for (int i = 0; i < Q->d; i++)
            f += 0.5 * Q->eps[i] * Q->eps[i];
        used++;
        if (!R_FINITE(f)) {
            s1 = f; /* -Inf (or NaN): the ELBO of q is not finite */
            st = VB_NONFINITE;
            break;
        }
        s1 += f;
        s2 += f * f;
    }
    Q->S = S_keep;
    if (st == VB_OK) {
        double mean = s1 / used, var = (s2 - used * mean * mean) / (used - 1);
        *elbo = mean + entropy(Q) - 0.5 * Q->d;
        *se = sqrt(fmax(var, 0) / used);
    } else {
        *elbo = st == VB_NONFINITE ? s1 : R_NaN;
        *se = R_NaN;
    }
    return st;
}

/*
 * The SGVB worker: from lambda (packed start), the step-size search, the
 * decay phase and the averaging phase, then the final ELBO.  On return lam
 * and Q's mu, L hold the final q.  Returns the status (see the contract).
 */
static int run(sgvb *Q, const sgvb_settings *C, double *lam, run_result *R) {
    int P = Q->P, it = 0, bad = 0, status = VB_MAXIT, total_bad = 0;
    adam A;
    adam_init(&A, P);
    memcpy(A.lam, lam, sizeof(double) * P);
    vb_progress pr;
    vb_progress_init(&pr, C->quiet);
    vb_trace_init(&R->trace);
    vb_trace_init(&R->smooth);
    R->elbo = R->elbo_se = R_NaN;
    /* Adam's jitter costs about P eta^2 nats of ELBO before averaging: the
     * final step shrinks with the number of parameters */
    double eta = C->eta, eta_final = fmin(ETA_FINAL, 0.1 / sqrt((double)P));
    if (C->newton) {
        /* a full gradient step in the whitened coordinates is a Newton
         * step when the curvature of the start is the posterior's: no
         * search, no required halvings (a falling ELBO halves it) */
        if (!(eta > 0)) eta = 1.0;
        eta_final = eta;
        status = VB_OK;
    } else if (!(eta > 0) && C->laplace_start) {
        /* q starts at the Laplace approximation, within a fraction of a
         * posterior sd of the optimum for a near-Gaussian posterior: trial
         * runs at steps of up to one sd would first move it away */
        eta = eta_final;
        status = VB_OK;
    } else if (!(eta > 0)) {
        status = search_eta(Q, &A, C->adapt_iter, &pr, &eta);
        /* a start close to the optimum makes the smallest trial step look
         * best; a step below eta_final would only freeze the iterate */
        if (status == VB_OK && eta < eta_final) eta = eta_final;
    } else
        status = VB_OK;
    windows W;
    windows_init(&W, Q);
    if (status == VB_OK) {
        status = VB_MAXIT;
        while (it < C->maxit) {
            if (vb_interrupted()) {
                status = VB_INTERRUPTED;
                break;
            }
            double e;
            int st = adam_step(Q, &A, eta, &e);
            it++;
            if (hard_status(st)) {
                status = st;
                break;
            }
            if (st == VB_NONFINITE) {
                total_bad++;
                if (W.final) W.bad_final++;
                if (++bad >= SGVB_MAX_BAD) {
                    status = VB_NONFINITE;
                    break;
                }
                continue;
            }
            bad = 0;
            vb_trace_push(&R->trace, e);
            window_add(&W, e, A.lam);
            if (W.wn < C->window) continue;
            progress(&pr, W.final ? "sgvb (averaging)" : "sgvb", it, W.wsum / W.wn);
            if (window_close(&W, Q, &A, C, eta_final, &eta, &R->smooth)) {
                /* q has mass where the log density is not finite: no claim */
                status = W.bad_final > 0 ? VB_NONFINITE : VB_OK;
                break;
            }
        }
    }
    /* q: the mean of the final phase's window averages (Polyak averaging),
     * or the current iterate when the run stopped before that phase */
    if (W.nb > 0)
        for (int k = 0; k < P; k++)
            A.lam[k] = W.bs[k] / W.nb;
    memcpy(lam, A.lam, sizeof(double) * P);
    unpack(Q, lam);
    form_L(Q);
    R->eta = eta;
    R->iterations = it;
    /* the final ELBO is estimated unless the run failed before reaching a q */
    int estimable = status == VB_OK || status == VB_MAXIT || (status == VB_NONFINITE && W.final);
    /* stopped by rejected draws before the final phase: no q to report */
    R->aborted = status == VB_NONFINITE && !W.final;
    R->consecutive_bad = bad;
    R->n_averaged = W.nb;
    R->decays = W.decays;
    if (W.bad_final > 0 && (status == VB_NONFINITE || status == VB_MAXIT)) {
        /* draws of the final phase were rejected: q has mass where the log
         * density is -Inf, so its ELBO is -Inf whatever a finite sample of
         * fresh draws might show */
        R->elbo = R_NegInf;
        estimable = 0;
    }
    if (estimable && C->final_elbo) {
        int st = final_elbo(Q, C->elbo_samples, C->elbo_se, &R->elbo, &R->elbo_se);
        if (st != VB_OK) status = st;
    }
    R->n_nonfinite = total_bad;
    return status;
}

/* Raw gradient estimates at a fixed q, nrep columns of out (P x nrep) and
 * their ELBO estimates in el (NaN where a draw was not finite). */
static int grad_worker(sgvb *Q, int nrep, double *out, double *el) {
    for (int r = 0; r < nrep; r++) {
        if (vb_interrupted()) return VB_INTERRUPTED;
        int st = estimate(Q, el + r);
        if (hard_status(st)) return st;
        if (st == VB_NONFINITE) el[r] = R_NaN;
        memcpy(out + (size_t)r * Q->P, Q->gacc, sizeof(double) * Q->P);
    }
    return VB_OK;
}

/* ------------------------------------------------------ entry points -- */

static void sgvb_alloc(sgvb *Q, const vb_target *T, int fullrank, int score, int S, int baseline,
                       int stl) {
    int d = T->d;
    Q->f = T->f;
    Q->model = T->model;
    Q->tstatus = T->status;
    Q->d = d;
    Q->stl = stl;
    Q->fullrank = fullrank;
    Q->score = score;
    Q->S = S;
    Q->baseline = baseline;
    Q->P = npar(d, fullrank);
    Q->mu = (double *)R_alloc(d, sizeof(double));
    Q->L = (double *)R_alloc((size_t)d * d, sizeof(double));
    memset(Q->L, 0, sizeof(double) * (size_t)d * d); /* upper triangle stays 0 */
    Q->ld = (double *)R_alloc(d, sizeof(double));
    Q->eps = (double *)R_alloc((size_t)S * d, sizeof(double));
    Q->z = (double *)R_alloc((size_t)S * d, sizeof(double));
    Q->gf = (double *)R_alloc((size_t)S * d, sizeof(double));
    Q->u = (double *)R_alloc(d, sizeof(double));
    Q->fz = (double *)R_alloc(S, sizeof(double));
    Q->gacc = (double *)R_alloc(Q->P, sizeof(double));
    Q->ema = 0;
    Q->ema_set = 0;
    Q->n_grad = Q->n_eval = 0;
    Q->pre = NULL;
    Q->ustep = (double *)R_alloc(d, sizeof(double));
    Q->tw = 0;
    Q->Lt = (double *)R_alloc((size_t)d * d, sizeof(double));
    memset(Q->Lt, 0, sizeof(double) * (size_t)d * d);
    Q->aw = (double *)R_alloc(d, sizeof(double));
    Q->newton = 0;
    Q->cv = 0;
    Q->H = NULL;
    Q->hv = (double *)R_alloc(d, sizeof(double));
    Q->nsc = (double *)R_alloc(Q->P, sizeof(double));
    for (int k = 0; k < Q->P; k++)
        Q->nsc[k] = 1.0;
    for (int j = 0, k = d; j < d; j++) {
        Q->nsc[k] = 0.5; /* log L_jj: curvature 2 at the optimum */
        k += fullrank ? d - j : 1;
    }
}

/* The target, with the dimension limit of the entry points. */
static void target_setup(SEXP model, SEXP holder, vb_target *T) {
    vb_target_setup(model, holder, T);
    if (T->d < 1 || T->d > SGVB_MAX_D)
        Rf_error("SGVB supports 1 to %d parameters (got %d)", SGVB_MAX_D, T->d);
}

/* Checks mu (d) and L (d x d, lower triangle finite, positive diagonal). */
static void check_q(SEXP mu, SEXP L, int d, const char *what) {
    if (TYPEOF(mu) != REALSXP || Rf_xlength(mu) != d)
        Rf_error("'mu' must be a double vector of length %d", d);
    if (TYPEOF(L) != REALSXP || !Rf_isMatrix(L) || Rf_nrows(L) != d || Rf_ncols(L) != d)
        Rf_error("'%s' must be a %d x %d double matrix", what, d, d);
    for (int i = 0; i < d; i++) {
        if (!R_FINITE(REAL(mu)[i])) Rf_error("'mu' must be finite");
        double lii = REAL(L)[i + (size_t)i * d];
        if (!(lii > 0) || !R_FINITE(lii))
            Rf_error("the diagonal of '%s' must be finite and positive", what);
        for (int j = 0; j < i; j++)
            if (!R_FINITE(REAL(L)[i + (size_t)j * d])) Rf_error("'%s' must be finite", what);
    }
}

/* The estimator options: opts = list(fullrank, score, samples [, ...]). */
static void read_opts(SEXP opts, int *fullrank, int *score, int *S) {
    *fullrank = vb_flag_elt(opts, "fullrank", "opts");
    *score = vb_flag_elt(opts, "score", "opts");
    *S = vb_int_elt(opts, "samples", 1, 1000000, "opts");
}

/* Optional opts elements: absent means the default. */
static int opt_flag(SEXP opts, const char *name, int dflt) {
    return vb_elt(opts, name) == R_NilValue ? dflt : vb_flag_elt(opts, name, "opts");
}
static double opt_num(SEXP opts, const char *name, double lo, double hi, double dflt) {
    return vb_elt(opts, name) == R_NilValue ? dflt : vb_num_elt(opts, name, lo, hi, "opts");
}

static void read_settings(SEXP control, SEXP opts, sgvb_settings *C) {
    const char *w = "control";
    C->maxit = vb_int_elt(control, "sgvb_maxit", 1, INT_MAX - 1, w);
    C->tol = vb_num_elt(control, "sgvb_tol", 0, R_PosInf, w);
    C->quiet = vb_flag_elt(control, "quiet", w);
    SEXP eta = vb_elt(control, "step_size");
    C->eta = eta == R_NilValue ? 0 : vb_num_elt(control, "step_size", 0, R_PosInf, w);
    if (eta != R_NilValue && !(C->eta > 0))
        Rf_error("'control$step_size' must be positive or NULL");
    C->adapt_iter = vb_int_elt(control, "adapt_iter", 2, INT_MAX - 1, w);
    C->window = vb_int_elt(control, "window", 2, INT_MAX - 1, w);
    C->decays = vb_int_elt(control, "step_decays", 0, INT_MAX - 1, w);
    C->elbo_samples = vb_int_elt(control, "elbo_samples", 2, INT_MAX - 1, w);
    C->prec = vb_num_elt(control, "precision", 0, R_PosInf, w);
    if (!(C->prec > 0)) Rf_error("'control$precision' must be positive");
    /* opts: laplace_start (absent: FALSE, the search), final_elbo, elbo_se */
    C->laplace_start = opt_flag(opts, "laplace_start", 0);
    C->final_elbo = opt_flag(opts, "final_elbo", 1);
    C->elbo_se = opt_num(opts, "elbo_se", 0, R_PosInf, 0);
    /* opts: newton (absent: FALSE, Adam) and window (absent: control's) */
    C->newton = opt_flag(opts, "newton", 0);
    if (vb_elt(opts, "window") != R_NilValue)
        C->window = vb_int_elt(opts, "window", 2, INT_MAX - 1, "opts");
}

/* The start lambda: from (mu0, L0), whitened by pre when given (fullrank). */
static void start_lambda(sgvb *Q, SEXP mu0, SEXP L0, double *lam) {
    int d = Q->d;
    if (!Q->tw) {
        pack(d, Q->fullrank, REAL(mu0), REAL(L0), lam);
        return;
    }
    /* Lt = pre^{-1} L0, lower triangular with positive diagonal when both are */
    double one = 1.0, *Lt0 = (double *)R_alloc((size_t)d * d, sizeof(double));
    for (int j = 0; j < d; j++)
        for (int i = 0; i < d; i++)
            Lt0[i + (size_t)j * d] = i >= j ? REAL(L0)[i + (size_t)j * d] : 0;
    F77_CALL(dtrsm)
    ("L", "L", "N", "N", &d, &d, &one, Q->pre, &d, Lt0, &d FCONE FCONE FCONE FCONE);
    for (R_xlen_t k = 0; k < (R_xlen_t)d * d; k++)
        if (!R_FINITE(Lt0[k])) Rf_error("'pre' is too ill-conditioned to whiten 'L0'");
    pack(d, Q->fullrank, REAL(mu0), Lt0, lam);
}

/* The checks and allocation both entry points share: the target, q's shape,
 * the estimator options, and the baseline/stl flags (read from `flags`). */
static void engine_setup(SEXP model, SEXP holder, SEXP mu, SEXP L, const char *Lname, SEXP opts,
                         SEXP flags, const char *fname, vb_target *T, sgvb *Q) {
    int fullrank, score, S;
    target_setup(model, holder, T);
    check_q(mu, L, T->d, Lname);
    read_opts(opts, &fullrank, &score, &S);
    int baseline = vb_flag_elt(flags, "baseline", fname);
    /* sticking the landing pays where q can equal the posterior (fullrank);
     * for a mean-field q of a correlated posterior its dropped score term is
     * what keeps the iterates' noise unbiased: there the averaged means
     * drifted by half a standard deviation, so mean-field uses plain
     * reparameterisation gradients */
    int stl = vb_flag_elt(flags, "stl", fname) && fullrank;
    sgvb_alloc(Q, T, fullrank, score, S, baseline, stl);
}

/* H = (pre pre')^{-1} = pre^{-T} pre^{-1}, O(d^3) once (wrapper only). */
static double *cv_curvature(int d, const double *pre) {
    double *P = (double *)R_alloc((size_t)d * d, sizeof(double));
    double *H = (double *)R_alloc((size_t)d * d, sizeof(double));
    memcpy(P, pre, sizeof(double) * (size_t)d * d);
    int info = 0;
    F77_CALL(dtrtri)("L", "N", &d, P, &d, &info FCONE FCONE);
    if (info != 0) Rf_error("'pre' is singular: no control variate");
    for (int j = 0; j < d; j++)
        for (int i = 0; i < j; i++)
            P[i + (size_t)j * d] = 0;
    double one = 1.0, zero = 0.0;
    F77_CALL(dsyrk)("L", "T", &d, &d, &one, P, &d, &zero, H, &d FCONE FCONE);
    for (int j = 0; j < d; j++)
        for (int i = 0; i < j; i++)
            H[i + (size_t)j * d] = H[j + (size_t)i * d];
    return H;
}

SEXP C_sgvb_fit(SEXP model, SEXP mu0, SEXP L0, SEXP pre, SEXP control, SEXP opts) {
    int nprot = 0;
    SEXP holder = PROTECT(Rf_allocVector(VECSXP, 2));
    nprot++;
    vb_target T;
    sgvb Q;
    engine_setup(model, holder, mu0, L0, "L0", opts, control, "control", &T, &Q);
    int d = T.d;
    if (pre != R_NilValue) check_q(mu0, pre, d, "pre");
    sgvb_settings C;
    read_settings(control, opts, &C);
    if (pre != R_NilValue) {
        Q.pre = REAL(pre);
        Q.tw = Q.fullrank;
    }
    if (C.newton && pre == R_NilValue)
        Rf_error("'opts$newton' needs the preconditioner 'pre' (the Cholesky factor of the inverse "
                 "curvature)");
    Q.newton = C.newton;
    int glm_moments = opt_flag(opts, "glm_moments", 0);
    if (glm_moments &&
        (T.f != vb_glm_log_joint || ((const vb_glm *)T.model)->family == VB_GAUSSIAN))
        Rf_error("'opts$glm_moments' needs a binomial or Poisson GLM target");
    if (opt_flag(opts, "control_variate", 0)) {
        if (pre == R_NilValue || Q.score)
            Rf_error(
                "'opts$control_variate' needs the preconditioner 'pre' and the reparameterisation "
                "estimator");
        Q.cv = 1;
        Q.stl = 0; /* the control variate replaces the path derivative */
        if (!Q.fullrank) Q.H = cv_curvature(d, Q.pre);
    }
    double *lam = (double *)R_alloc(Q.P, sizeof(double));
    start_lambda(&Q, mu0, L0, lam);
    run_result R;

    GetRNGstate();
    int status = run(&Q, &C, lam, &R);
    PutRNGstate();

    const char *nms[] = {"mu",          "L",         "elbo",     "elbo_se",
                         "trace",       "smooth",    "eta",      "iterations",
                         "status",      "converged", "n_grad",   "n_eval",
                         "n_nonfinite", "error",     "aborted",  "consecutive_bad",
                         "n_averaged",  "decays",    "glm_elbo", "eta_mean",
                         "eta_var",     ""};
    SEXP out = vb_named_list(nms, &nprot);
    if (glm_moments && (status == VB_OK || status == VB_MAXIT)) {
        /* the closed-form ELBO of a GLM at the returned q, and the moments
         * of its linear predictor (opts$glm_moments) */
        const vb_glm *M = (const vb_glm *)T.model;
        int n = M->n, nc = n < VB_CHUNK ? n : VB_CHUNK;
        SEXP em = PROTECT(Rf_allocVector(REALSXP, n)), ev = PROTECT(Rf_allocVector(REALSXP, n));
        SEXP ge = PROTECT(Rf_allocVector(REALSXP, 3));
        nprot += 3;
        double *work = (double *)R_alloc((size_t)nc * d + 1, sizeof(double));
        int st =
            vb_glm_target_moments(&T, Q.mu, Q.L, !Q.fullrank, REAL(em), REAL(ev), work, REAL(ge));
        if (st == VB_INTERRUPTED) status = st;
        if (st == VB_OK) {
            SET_VECTOR_ELT(out, 18, ge);
            SET_VECTOR_ELT(out, 19, em);
            SET_VECTOR_ELT(out, 20, ev);
        }
    }
    SET_VECTOR_ELT(out, 0, vb_real_vec(d, Q.mu));
    SET_VECTOR_ELT(out, 1, vb_real_mat(d, d, Q.L));
    SET_VECTOR_ELT(out, 2, Rf_ScalarReal(R.elbo));
    SET_VECTOR_ELT(out, 3, Rf_ScalarReal(R.elbo_se));
    SET_VECTOR_ELT(out, 4, vb_real_vec(R.trace.n, R.trace.x));
    SET_VECTOR_ELT(out, 5, vb_real_vec(R.smooth.n, R.smooth.x));
    SET_VECTOR_ELT(out, 6, Rf_ScalarReal(R.eta));
    SET_VECTOR_ELT(out, 7, Rf_ScalarInteger(R.iterations));
    SET_VECTOR_ELT(out, 8, Rf_ScalarInteger(status));
    SET_VECTOR_ELT(out, 9, Rf_ScalarLogical(status == VB_OK));
    SET_VECTOR_ELT(out, 10, Rf_ScalarReal(Q.n_grad));
    SET_VECTOR_ELT(out, 11, Rf_ScalarReal(Q.n_eval));
    SET_VECTOR_ELT(out, 12, Rf_ScalarReal(R.n_nonfinite));
    SET_VECTOR_ELT(out, 13, VECTOR_ELT(holder, 0));
    SET_VECTOR_ELT(out, 14, Rf_ScalarLogical(R.aborted));
    SET_VECTOR_ELT(out, 15, Rf_ScalarInteger(R.consecutive_bad));
    SET_VECTOR_ELT(out, 16, Rf_ScalarInteger(R.n_averaged));
    SET_VECTOR_ELT(out, 17, Rf_ScalarInteger(R.decays));
    UNPROTECT(nprot);
    return out;
}

/*
 * Raw gradient estimates at a given q, for tests: nrep columns, each the
 * average of S draws (their ELBO estimates in attribute "elbo").
 * opts = list(fullrank, score, samples, nrep, baseline, stl).  A failure of
 * the target is an R error raised here, after the RNG state is saved.
 */
SEXP C_sgvb_grad(SEXP model, SEXP mu, SEXP L, SEXP opts) {
    int nprot = 0;
    SEXP holder = PROTECT(Rf_allocVector(VECSXP, 2));
    nprot++;
    vb_target T;
    sgvb Q;
    engine_setup(model, holder, mu, L, "L", opts, opts, "opts", &T, &Q);
    int d = T.d, fullrank = Q.fullrank;
    int nrep = vb_int_elt(opts, "nrep", 1, 100000000, "opts");
    double *lam = (double *)R_alloc(Q.P, sizeof(double));
    pack(d, fullrank, REAL(mu), REAL(L), lam);
    unpack(&Q, lam);
    SEXP out = PROTECT(Rf_allocMatrix(REALSXP, Q.P, nrep));
    SEXP el = PROTECT(Rf_allocVector(REALSXP, nrep));
    nprot += 2;

    GetRNGstate();
    int status = grad_worker(&Q, nrep, REAL(out), REAL(el));
    PutRNGstate();

    if (status == VB_INTERRUPTED) Rf_error("sgvb gradients: interrupted by the user");
    if (status != VB_OK) {
        SEXP cond = VECTOR_ELT(holder, 0), msg = R_NilValue;
        if (TYPEOF(cond) == VECSXP && Rf_xlength(cond) > 0) msg = VECTOR_ELT(cond, 0);
        Rf_error("sgvb gradients: the log density failed%s%s",
                 TYPEOF(msg) == STRSXP && Rf_length(msg) > 0 ? ": " : "",
                 TYPEOF(msg) == STRSXP && Rf_length(msg) > 0 ? CHAR(STRING_ELT(msg, 0)) : "");
    }
    Rf_setAttrib(out, Rf_install("elbo"), el);
    UNPROTECT(nprot);
    return out;
}
