/*
 * vbayes.h — shared headers, the log-joint contract and every prototype
 * that crosses a file boundary.
 */
#ifndef VBAYES_H
#define VBAYES_H

#include <R.h>
#include <R_ext/BLAS.h>
#include <R_ext/Lapack.h>
#include <R_ext/Utils.h>
#include <Rinternals.h>
#include <Rmath.h>
#ifndef FCONE
#define FCONE
#endif

/*
 * The log-joint contract.  Every model in C exposes log p(y, theta) and, when
 * grad != NULL, writes its gradient in theta.  The stochastic-gradient engine,
 * importance-weighted evidence and PSIS diagnostics are written against it.
 */
typedef double (*vb_log_joint)(const double *theta, double *grad, void *model);

/* ---- linalg.c: checked BLAS/LAPACK wrappers (status codes, no R errors) ---- */
int vb_chol(int p, double *A, int lda);                         /* upper R'R = A */
double vb_chol_logdet(int p, const double *R, int ldr);         /* log|A|         */
int vb_chol_inv(int p, double *R, int ldr);                     /* R -> A^{-1}    */
void vb_chol_solve(int p, const double *R, int ldr, double *b); /* A x = b       */
void vb_xtwx(int n, int k, const double *X, int ldx, const double *w, double *work,
             double *out);                        /* X'diag(w)X, w>=0 */
void vb_symmetrize(int p, double *A);             /* upper -> full  */
void vb_linalg_error(int info, const char *what); /* R error; wrappers only */

/* ---- glm.c: the GLM model, used by the CAVI engine and the log joint ---- */
enum { VB_GAUSSIAN = 0, VB_POISSON = 1, VB_BINOMIAL = 2 };
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
double vb_glm_prior(const vb_glm *M, int j, double mu, double s2, double *dmu, double *ds2);

#endif
