/*
 * vbayes.h — shared headers, the log-joint contract, the engine toolkit
 * (status codes, named settings, traces, step search, interrupts, Gaussian
 * expectations) and every prototype that crosses a file boundary.
 */
#ifndef VBAYES_H
#define VBAYES_H

#include <R.h>
#include <R_ext/BLAS.h>
#include <R_ext/Lapack.h>
#include <R_ext/Utils.h>
#include <Rinternals.h>
#include <Rmath.h>
#include <string.h>
#ifndef FCONE
#define FCONE
#endif

#define VB_LOG2PI 1.837877066409345483560659472811 /* log(2 pi) */

/*
 * The log-joint contract.  Every model in C exposes log p(y, theta) and, when
 * grad != NULL, writes its gradient in theta.  The stochastic-gradient engine,
 * importance-weighted evidence and PSIS diagnostics are written against it.
 */
typedef double (*vb_log_joint)(const double *theta, double *grad, void *model);

/*
 * Status codes: what every worker returns and every engine result carries as
 * `status`.  R's vb_status_message() (R/utils.R) is the one place that turns a
 * code into a sentence; `converged` is status == VB_OK and nothing else.
 */
enum {
    VB_OK = 0,          /* the convergence criterion was met, ELBO finite, non-decreasing */
    VB_MAXIT = 1,       /* the iteration limit was reached first                          */
    VB_STALLED = 2,     /* a sweep accepted no step: the step search ran out              */
    VB_NOT_PD = 3,      /* a factorisation failed: a matrix was not positive definite     */
    VB_NONFINITE = 4,   /* the objective (or a draw of it) was not finite                 */
    VB_DECREASED = 5,   /* the objective decreased beyond rounding (a monotone engine)    */
    VB_INTERRUPTED = 6, /* the user interrupted                                           */
    VB_LAPACK_ARG = 7,  /* LAPACK rejected an argument (internal error)                   */
    VB_BAD_INPUT = 8    /* a value the engine cannot evaluate reached it                  */
};

/* ---- util.c: the R <-> C boundary ---- */
SEXP vb_elt(SEXP list, const char *name); /* element by exact name, or R_NilValue */
SEXP vb_elt_req(SEXP list, const char *name, const char *what); /* ... or an R error       */
const double *vb_real_elt(SEXP list, const char *name, R_xlen_t len, const char *what);
int vb_int_elt(SEXP list, const char *name, int lo, int hi, const char *what);
double vb_num_elt(SEXP list, const char *name, double lo, double hi, const char *what);
int vb_flag_elt(SEXP list, const char *name, const char *what);
SEXP vb_named_list(const char **names, int *nprot); /* protected; names end with "" */
SEXP vb_real_vec(R_xlen_t n, const double *src);    /* unprotected copy          */
SEXP vb_real_mat(int nr, int nc, const double *src);

/*
 * The settings contract: the named vb_control() list, read once by name.
 * Engines read the fields they use; no positional control vectors.
 */
typedef struct {
    int maxit;     /* sweeps (CAVI) / EM iterations                            */
    double tol;    /* relative ELBO change that counts as converged            */
    int quiet;     /* progress lines off (never silences a warning)            */
    int joint_max; /* joint mean steps for factorised q with p <= joint_max    */
} vb_settings;
void vb_settings_read(SEXP control, vb_settings *s);

/* One convergence predicate: |new - old| <= tol (|new| + tol). */
int vb_tol_met(double old, double new_, double tol);

/* A trace of objective values that grows as needed (R_alloc, freed by R). */
typedef struct {
    double *x;
    int n, cap;
} vb_trace;
void vb_trace_init(vb_trace *tr);
void vb_trace_push(vb_trace *tr, double value);

/*
 * Step search.  try(a, ctx, &value) evaluates the objective at step a and
 * returns a status (non-zero: the trial point is invalid, e.g. a failed
 * factorisation).  vb_step_search tries a = 1, 1/2, ... for at most
 * VB_STEP_HALVINGS halvings and accepts the first finite value >= old - slack,
 * slack = 1e-13 |old| (rounding), returning VB_OK with *a_out, *val_out, or
 * VB_STALLED (no trial accepted) or the last trial status (VB_NOT_PD, ...)
 * when every trial failed for that reason.
 */
#define VB_STEP_HALVINGS 40
typedef int (*vb_step_try)(double a, void *ctx, double *value);
int vb_step_search(vb_step_try try_, void *ctx, double old, double *a_out, double *val_out);
double vb_step_slack(double old);

/*
 * Interrupts without a longjmp: returns 1 if the user pressed Ctrl-C (checked
 * at most every 0.1 s of CPU), so a worker can return VB_INTERRUPTED and the
 * entry point restore its state (the RNG) before R raises the condition.
 */
int vb_interrupted(void);
/*
 * Progress: "<what>: iteration i, ELBO e" as an R message() at most once a
 * second of CPU (option vbayes.progress_interval, seconds), unless quiet.  A
 * handler that jumps (tryCatch(message = ), an error, an interrupt) makes
 * vb_interrupted() return 1 until the next vb_progress_init(): the worker
 * returns VB_INTERRUPTED and R's check_status() resumes the jump.
 */
typedef struct {
    double last, every;
    int quiet;
} vb_progress;
int vb_unwind_pending(void);
void vb_progress_init(vb_progress *pr, int quiet);
void vb_progress_tick(vb_progress *pr, const char *what, int it, double elbo);

/* ---- expect.c: E log p(y | eta) for eta ~ N(m, v), with d/dm and d/dv ---- */
enum { VB_GAUSSIAN = 0, VB_POISSON = 1, VB_BINOMIAL = 2 }; /* the one family encoding */
/* gaussian with precision tau (E tau, E log tau), weight w: the eta-dependent part
 * 1/2 (E log tau - E tau w ((y - m)^2 + v)) */
double vb_egauss(double y, double w, double Etau, double Elogtau, double m, double v, double *dm,
                 double *dv);
/* poisson with log link, weight w: w (y m - exp(m + v/2)), lgamma(y+1) left out */
double vb_epois(double y, double w, double m, double v, double *dm, double *dv);
/* binomial, y successes of w trials, logit link, Gauss-Hermite rule (x, wt) of k nodes */
double vb_ebinom(double y, double w, double m, double v, int k, const double *x, const double *wt,
                 double *dm, double *dv);
/* vb_ebinom over n observations, eight at a time where q is narrow */
double vb_ebinom_n(int n, const double *y, const double *w, const double *m, const double *v,
                   int k, const double *x, const double *wt, double *dm, double *dv);
static inline double vb_softplus(double x) { /* log(1 + e^x) without overflow */
    return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x));
}

/* ---- linalg.c: checked BLAS/LAPACK wrappers (status codes, no R errors) ---- */
int vb_chol(int p, double *A, int lda);                         /* upper R'R = A */
double vb_chol_logdet(int p, const double *R, int ldr);         /* log|A|         */
int vb_chol_inv(int p, double *R, int ldr);                     /* R -> A^{-1}    */
void vb_chol_solve(int p, const double *R, int ldr, double *b); /* A x = b       */
#define VB_CHUNK 4096 /* rows per chunk of the O(n k^2) BLAS passes (interrupt checks) */
int vb_xtwx(int n, int k, const double *X, int ldx, const double *w, double *work,
            double *out); /* X'diag(w)X, w>=0; VB_INTERRUPTED */
int vb_rowvar(int n, int k, const double *X, int ldx, const double *R, double *work,
              double *out);                             /* x_t'(R'R)^{-1}x_t per row */
void vb_symmetrize(int p, double *A);                   /* upper -> full  */
int vb_gram_rank(int p, const double *G, double *work); /* rank of X'WX; work p^2 + 4p */
int vb_lapack_status(int info);                   /* info -> VB_OK / VB_NOT_PD / VB_LAPACK_ARG */
void vb_linalg_error(int info, const char *what); /* R error; wrappers only */

/*
 * ---- btd.c: block-tridiagonal solver (Kalman filter / RTS smoother form) ----
 * Lambda (Td x Td, symmetric positive definite) has diagonal blocks D_t and
 * sub-diagonal blocks L_t = Lambda_{t,t-1} (t = 1..T-1), each d x d and
 * column-major; D holds T blocks back to back.  L_t is read at
 * L + t * lstride: lstride = 0 uses the one block L for every t (a
 * time-invariant prior), lstride = d*d reads T blocks (L_0 unused).
 * Outputs: m (d x T) = Lambda^{-1} b; S (d x d x T), S_t = Sigma_tt;
 * Sc (d x d x T), Sc_t = Sigma_{t,t-1}, Sc_0 = 0; *logdet = log|Sigma|
 * = -log|Lambda|.  work: VB_BTD_WORK(d) doubles.  Returns VB_OK,
 * VB_NOT_PD (Lambda is not positive definite), VB_LAPACK_ARG,
 * VB_INTERRUPTED or VB_BAD_INPUT (T < 1 or d < 1).  O(T d^3) time.
 */
#define VB_BTD_WORK(d) (3 * (size_t)(d) * (size_t)(d) + (size_t)(d))
int vb_btd_solve(int T, int d, const double *D, const double *L, size_t lstride, const double *b,
                 double *m, double *S, double *Sc, double *logdet, double *work);

/* ---- glm_model.c: the GLM model, used by the CAVI engines and the log joint ---- */
enum { VB_PRIOR_NORMAL = 0, VB_PRIOR_LAPLACE = 1 };

typedef struct {
    int n, p, family;
    const double *X;   /* n x p, column-major                           */
    const double *y;   /* response (binomial: successes)                */
    const double *off; /* offset, log exposure included                 */
    const double *wt;  /* prior weights (binomial: trials)              */
    const int *ptype;  /* per-coefficient prior: VB_PRIOR_*             */
    const double *ploc, *pscale;
    double a0, b0;        /* Gamma(shape, rate) prior on the noise precision */
    double Etau, Elogtau; /* moments of q(tau) (gaussian)                  */
    double llconst;       /* terms of log p(y | eta) free of eta and tau   */
    int ngh;              /* Gauss-Hermite rule for binomial expectations  */
    const double *ghx, *ghw;
    double *eta; /* scratch, length n (log joint)                 */
} vb_glm;

void vb_glm_unpack(SEXP model, vb_glm *M);
double vb_glm_log_joint(const double *theta, double *grad, void *model);
double vb_glm_obs(const vb_glm *M, int t, double m, double v, double *dm, double *dv);
double vb_glm_obs_sum(const vb_glm *M, const double *m, const double *v, double *dm, double *dv);
double vb_glm_prior(const vb_glm *M, int j, double mu, double s2, double *dmu, double *ds2);
double vb_glm_tau_terms(const vb_glm *M, double A, double B); /* E log p(tau) + H[q(tau)] */
/* The result list shared by the GLM engines (protected on return; caller unprotects 1). */
SEXP vb_glm_result(const vb_glm *M, const double *mu, const double *Sigma, double elbo,
                   const vb_trace *tr, int it, double ll, double kl, int status, const double *tau,
                   const double *m, const double *v);
/* sets the result's `rank` (rank of X'WX over positive-weight rows; NA unless set) */
void vb_glm_result_rank(SEXP out, int rank);
void vb_glm_result_ewrss(SEXP out, double ewrss);
void vb_glm_result_fitted(SEXP out, const vb_glm *M, const double *dm);

/* ---- sgvb_targets.c: the log joints SGVB fits, behind the vb_log_joint contract ---- */
/*
 * A target: f(theta, grad, model) and the dimension d.  A target that can fail
 * (the R closure of vb_density()) points `status` at its own code, VB_OK while
 * it works; the engine stops with that code when it is set.  The R closure's
 * error or interrupt condition is kept in `holder` (element 0) for the entry
 * point to return.  vb_target_setup is called by entry points only (R errors).
 */
typedef struct {
    vb_log_joint f;
    void *model;
    int d;
    const int *status; /* NULL: the target cannot fail */
} vb_target;
void vb_target_setup(SEXP model, SEXP holder, vb_target *T);
/* closed-form ELBO c(elbo, loglik, kl) of a non-gaussian GLM target at N(mu, L L') and the
 * linear predictor's moments m, v (n each); work min(n, VB_CHUNK) p; VB_BAD_INPUT otherwise */
int vb_glm_target_moments(const vb_target *T, const double *mu, const double *L, int diag,
                          double *m, double *v, double *work, double *out);

#endif
