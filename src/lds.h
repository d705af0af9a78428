/*
 * lds.h — the latent linear dynamical system shared by its files:
 * lds_model.c (the model: unpacking, expectations, ELBO terms),
 * lds_structured.c, lds_block.c and lds_meanfield.c (the E-steps), lds_estep.c
 * (their .Call wrapper) and lds_mstep.c (the Poisson M-step).
 *
 * Model (one trial of T bins, N units, latent dimension d):
 *   z_1 ~ N(m0, V0),  z_t = A z_{t-1} + w_t,  w_t ~ N(0, Q);
 *   VB_GAUSSIAN: y_ti = c_i'z_t + d_i + e_ti,  e_ti ~ N(0, R_i);
 *   VB_POISSON:  y_ti ~ Poisson(exp(off_t + c_i'z_t + d_i))  (off_t = log exposure).
 * A missing y_ti (NaN) contributes nothing.  Arrays are column-major:
 * y T x N, C N x d, m d x T, S and Sc d x d x T.
 */
#ifndef VBAYES_LDS_H
#define VBAYES_LDS_H
#include "vbayes.h"

/* Relative slack on the ELBO of a monotone LDS step: a decrease beyond
 * LDS_ELBO_SLACK (1 + |ELBO|) is reported as VB_DECREASED (R/lds.R uses the
 * same value, lds_elbo_slack). */
#define LDS_ELBO_SLACK 1e-10
/* Interrupts are polled every LDS_POLL time steps (vb_interrupted() itself
 * reads the clock, a system call, and acts at most every 0.1 s). */
#define LDS_POLL 32

typedef struct {
    int T, N, d, family; /* family: VB_GAUSSIAN or VB_POISSON */
    const double *y, *off, *A, *Q, *C, *dv, *R, *m0, *V0;
    /* derived by lds_derive(): Q^{-1}, V0^{-1}, Q^{-1}A, A'Q^{-1}A, V0^{-1}m0 */
    double *Qi, *V0i, *QiA, *AtQiA, *V0im0;
    double ldQ, ldV0, lgy; /* log|Q|, log|V0|, sum of lgamma(y + 1) (poisson) */
    int *rowobs;           /* 1 if every unit is observed in bin t */
    double *Jg;            /* gaussian: C'R^{-1}C */
    double *Rinv, *logR;   /* gaussian: 1 / R_i, log R_i */
} lds_model;

/* lds_model.c */
void lds_unpack(lds_model *M, SEXP y, SEXP off, SEXP family, SEXP params); /* R errors */
int lds_derive(lds_model *M); /* inverses of Q, V0 (R_alloc; wrappers only): a status */
void lds_prior_diag(const lds_model *M, int t, double *D);
#define LDS_OBS_WORK(N, d) ((size_t)(N) * (3 * (size_t)(d) + 2))
double lds_obs_term(const lds_model *M, int t, const double *m, const double *S, double *J,
                    double *h, double *work);
double lds_obs_total(const lds_model *M, const double *m, const double *S, double *work);
double lds_latent_term(const lds_model *M, const double *m, const double *S, const double *Sc,
                       double logdet, double *work);

/* A structured q: natural parameters (D, L, b) with the one sub-diagonal
 * block L, moments (m, S, Sc, logdet), ELBO, and the pseudo-observations
 * (J, h) of its next natural-gradient step (computed with the ELBO). */
typedef struct {
    double *D, *L, *b, *m, *S, *Sc, *J, *h, logdet, elbo, loglik;
} lds_q;

/* lds_structured.c: work of LDS_ESTEP_WORK(N, d) doubles */
#define LDS_ESTEP_WORK(N, d)                                                                       \
    (LDS_OBS_WORK(N, d) + VB_BTD_WORK(d) + 12 * (size_t)(d) * (d) + 12 * (size_t)(d) + 64)
void lds_q_prior(const lds_model *M, lds_q *q);
int lds_estep_structured(const lds_model *M, lds_q *cur, lds_q *try_, int maxit, double tol,
                         int *iter, int *passes, double *work);
/* lds_meanfield.c: options of the meanfield E-step; joint = 0 for plain
 * coordinate sweeps, else joint steps on all factors with scratch big of
 * LDS_MF_JOINT_WORK(T, d) doubles; trace and progress may be NULL. */
typedef struct {
    int maxit, joint;
    double tol, *big;
    vb_trace *trace;
    vb_progress *progress;
} lds_mf_opts;
#define LDS_MF_JOINT_WORK(T, d) (4 * (size_t)(T) * (d) * (d) + 4 * (size_t)(T) * (d) + (size_t)(T))
int lds_estep_meanfield(const lds_model *M, double *m, double *S, double *logdetS, double *Sc0,
                        const lds_mf_opts *o, int *iter, int *passes, double *elbo, double *loglik,
                        double *work);

/* lds_block.c: runs s[0..nb]; work of LDS_BLOCK_WORK(N, d, Lmax) doubles */
#define LDS_BLOCK_WORK(N, d, Lmax)                                                                 \
    (6 * (size_t)(Lmax) * (d) * (d) + 4 * (size_t)(Lmax) * (d) + VB_BTD_WORK(d) +                  \
     LDS_OBS_WORK(N, d) + (size_t)(d) + 64)
int lds_estep_block(const lds_model *M, int nb, const int *s, double *D, double *Ls, double *b,
                    double *m, double *S, double *Sc, double *ld, int maxit, double tol, int *iter,
                    double *elbo, double *loglik, double *work);

/* small dense helpers (column-major) */
static inline void lds_gemm(const char *ta, const char *tb, int n, int k, int m, double alpha,
                            const double *X, int ldx, const double *Y, int ldy, double beta,
                            double *Z, int ldz) {
    /* Z = alpha op(X) op(Y) + beta Z; op(X) is n x k, op(Y) is k x m */
    F77_CALL(dgemm)(ta, tb, &n, &m, &k, &alpha, X, &ldx, Y, &ldy, &beta, Z, &ldz FCONE FCONE);
}

static inline void lds_gemv(const char *ta, int nr, int nc, double alpha, const double *X,
                            const double *x, double beta, double *y) {
    int one = 1;
    F77_CALL(dgemv)(ta, &nr, &nc, &alpha, X, &nr, x, &one, &beta, y, &one FCONE);
}

static inline double lds_dot(size_t n, const double *a, const double *b) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* A (p x p, SPD) -> A^{-1} in place; *logdet = log|A| if logdet != NULL.  A status. */
static inline int lds_spd_inverse(int p, double *A, double *logdet) {
    int info = vb_chol(p, A, p);
    if (info) return vb_lapack_status(info);
    if (logdet) *logdet = vb_chol_logdet(p, A, p);
    return vb_lapack_status(vb_chol_inv(p, A, p));
}

#endif
