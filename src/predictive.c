/*
 * predictive.c — predictive coding as variational (Laplace) inference.
 *
 * Model.  Layers x_0 (the data of a trial, n_0 units), x_1 .. x_L (latent,
 * n_l units):  x_L ~ N(mu, Sigma_L),  x_{l-1} | x_l ~ N(W_l f(x_l), Sigma_{l-1}),
 * f applied elementwise ("linear", "tanh", or an R closure returning
 * c(f, f', f'')).  Per trial, ln p(x_0, x) = sum_l ln N(r_l; 0, Sigma_l) with the
 * residuals r_l = x_l - W_{l+1} f(x_{l+1}) (r_L = x_L - mu) and the prediction
 * errors eps_l = Sigma_l^{-1} r_l.  Its gradient in x_l is
 *   g_l = -eps_l + f'(x_l) .* W_l' eps_{l-1},
 * the error-unit dynamics of predictive coding (Rao & Ballard 1999; Friston
 * 2005; Bogacz 2017): prediction errors are the gradients of the free energy.
 *
 * Inference (per trial).  The mode x* and q = N(x*, Lambda^{-1}) with Lambda
 * the negative Hessian (variational Laplace).  Lambda is block tridiagonal over
 * layers: diagonal blocks P_l + J_l W_l' P_{l-1} W_l J_l - diag(f''_l .* W_l' eps_{l-1})
 * (J_l = diag f'(x_l), P = Sigma^{-1}), sub-diagonal blocks -J_l W_l' P_{l-1}; so
 * each Newton step and the final covariance are one vb_btd_solve (btd.c) over L
 * blocks padded to d = max n_l units (padding: identity, uncoupled, zero
 * gradient; it adds nothing to log|Lambda|).
 *   newton: damped Newton (Levenberg shift when Lambda is not PD, step halving
 *     by vb_step_search) until the Newton decrement g' Lambda^{-1} g / 2 meets
 *     inner_tol;
 *   euler: Bogacz's (2017) appendix recursion, nsteps = round(t_max/dt) points
 *     (the first the start x_L = mu, x_{l-1} = W_l f(x_l); errors 0), every unit
 *     updated from the previous point: errors "instant" (eps = P r), "dynamic"
 *     (d eps/dt = r - Sigma eps) or "interneuron" (d eps/dt = r - e,
 *     de/dt = Sigma eps - e).  Converged when the decrement at the end meets
 *     inner_tol.
 * Free energy per trial: F = ln p(x_0, x*) + 1/2 ln|2 pi Lambda^{-1}|, exact log
 * evidence for linear f.
 *
 * Learning (variational EM over trials, f linearised at x* for the moments):
 * W_l = B_l A_l^{-1}, A_l = sum E[f f'], B_l = sum E[x_{l-1} f'];
 * Sigma_{l-1} = (1/N) sum E[r r']; mu = mean x_L*, Sigma_L = (1/N) sum E[(x_L-mu)(.)'].
 * q = "laplace" keeps the covariances in the expectations, q = "delta" drops
 * them (the classical rule, which maximises ln p(x_0, x*) jointly and lets
 * Sigma collapse).  A step search on the parameters (theta_old + a delta)
 * keeps the objective (F, or the joint ln p for delta) non-decreasing.
 * Online learning (lr > 0): after each trial, Bogacz's rules
 * W += lr P (B_t - W A_t), Sigma += lr (P E[r r'] - I) (symmetrised; with
 * interneurons lr (eps e' - I)), mu += lr eps_L.
 *
 * Inputs: y (N x n_0), model list (sizes, W, Sigma, mu, activation, what to
 * learn), control list.  Outputs: per trial modes, covariance blocks,
 * errors, F; the learned parameters; traces; the Euler trajectory.
 * Cost per trial and Newton step O(L d^3) (btd) + O(sum n_{l-1} n_l) per
 * gradient; Euler O(nsteps sum n_{l-1} n_l); learning O(N sum n_l^2) per
 * iteration.
 */
#include "vbayes.h"

enum { ACT_LINEAR = 0, ACT_TANH = 1, ACT_R = 2 };
enum { ERR_INSTANT = 0, ERR_DYNAMIC = 1, ERR_INTERNEURON = 2 };
enum { COV_FULL = 0, COV_DIAG = 1, COV_ISO = 2 };

typedef struct {
    int type;
    SEXP fn, holder; /* ACT_R: function(x) -> c(f, f', f'') or a condition */
    int status;
} pc_act;

typedef struct {
    int L, N, nx, ntot, d; /* layers, trials, latent units, all units, block size */
    int *n, *xo, *ro;      /* sizes n[0..L]; offsets of layer l in x (l >= 1) and r */
    const double *y;       /* N x n_0 */
    double *theta;         /* W_1..W_L, Sigma_0..Sigma_L, mu (packed) */
    int *woff, *soff, muoff, ntheta;
    double *P, *ld; /* precisions (packed like Sigma), log|Sigma_l| */
    int *poff;
    pc_act act;
    int lw, lprec, lprior, delta, inference, errors, cov;
    int maxit, inner_maxit, quiet, traj;
    double tol, inner_tol, dt, t_max, lr;
} pc_model;

typedef struct {
    double *x, *f, *df, *d2f, *wte; /* nx */
    double *r, *eps, *epsd, *e;     /* ntot */
    double *g, *xt, *step;          /* nx */
    double *D, *Lb, *b, *m, *S, *Sc, *bw, *H0, *tmp, *tmp2, *y0;
    double lp;
} pc_ws;

/* ----------------------------------------------------------- helpers -- */

static double *W_(const pc_model *M, int l) {
    return M->theta + M->woff[l];
}
static double *Sig_(const pc_model *M, int l) {
    return M->theta + M->soff[l];
}
static double *P_(const pc_model *M, int l) {
    return M->P + M->poff[l];
}

/* y = alpha op(A) x + beta y, A m x k column-major */
static void gemv(const char *tr, int m, int k, double alpha, const double *A, const double *x,
                 double beta, double *y) {
    int one = 1;
    if (m == 0 || k == 0) {
        int len = tr[0] == 'N' ? m : k;
        for (int i = 0; i < len; i++)
            y[i] = beta == 0 ? 0 : beta * y[i];
        return;
    }
    F77_CALL(dgemv)(tr, &m, &k, &alpha, A, &m, x, &one, &beta, y, &one FCONE);
}

/* C (m x n) = alpha op(A) op(B) + beta C */
static void gemm(const char *ta, const char *tb, int m, int n, int k, double alpha, const double *A,
                 int lda, const double *B, int ldb, double beta, double *C, int ldc) {
    F77_CALL(dgemm)
    (ta, tb, &m, &n, &k, &alpha, A, &lda, B, &ldb, &beta, C, &ldc FCONE FCONE);
}

/* Sigma -> P, log|Sigma| for every layer; VB_NOT_PD when some Sigma_l is not PD. */
static int pc_precisions(pc_model *M) {
    for (int l = 0; l <= M->L; l++) {
        int nl = M->n[l];
        double *P = P_(M, l);
        memcpy(P, Sig_(M, l), sizeof(double) * nl * nl);
        int info = vb_chol(nl, P, nl);
        if (info) return vb_lapack_status(info);
        M->ld[l] = vb_chol_logdet(nl, P, nl);
        if ((info = vb_chol_inv(nl, P, nl))) return vb_lapack_status(info);
    }
    return VB_OK;
}

/* ---------------------------------------------------------- activation -- */

typedef struct {
    pc_act *A;
    int n;
    const double *x;
} r_call;

static void r_act_eval(void *data) {
    r_call *c = (r_call *)data;
    SEXP xs = PROTECT(Rf_allocVector(REALSXP, c->n));
    memcpy(REAL(xs), c->x, sizeof(double) * c->n);
    SEXP call = PROTECT(Rf_lang2(c->A->fn, xs));
    SET_VECTOR_ELT(c->A->holder, 1, Rf_eval(call, R_GlobalEnv));
    UNPROTECT(2);
}

static int inherits_(SEXP x, const char *cls) {
    SEXP k = Rf_getAttrib(x, R_ClassSymbol);
    if (TYPEOF(k) != STRSXP) return 0;
    for (R_xlen_t i = 0; i < Rf_xlength(k); i++)
        if (strcmp(CHAR(STRING_ELT(k, i)), cls) == 0) return 1;
    return 0;
}

/* f, f', f'' at x (n values); a status (VB_BAD_INPUT: a non-finite or malformed value). */
static int act_eval(pc_act *A, int n, const double *x, double *f, double *df, double *d2f) {
    if (n == 0) return VB_OK;
    if (A->type == ACT_LINEAR) {
        for (int i = 0; i < n; i++) {
            f[i] = x[i];
            df[i] = 1;
            d2f[i] = 0;
        }
        return VB_OK;
    }
    if (A->type == ACT_TANH) {
        for (int i = 0; i < n; i++) {
            double t = tanh(x[i]);
            f[i] = t;
            df[i] = 1 - t * t;
            d2f[i] = -2 * t * (1 - t * t);
        }
        return VB_OK;
    }
    if (A->status != VB_OK) return A->status;
    r_call c = {A, n, x};
    SET_VECTOR_ELT(A->holder, 1, R_NilValue);
    if (!R_ToplevelExec(r_act_eval, &c)) return A->status = VB_BAD_INPUT;
    SEXP v = VECTOR_ELT(A->holder, 1);
    if (inherits_(v, "condition")) {
        SET_VECTOR_ELT(A->holder, 0, v);
        return A->status = inherits_(v, "interrupt") ? VB_INTERRUPTED : VB_BAD_INPUT;
    }
    if (TYPEOF(v) != REALSXP || Rf_xlength(v) != 3 * (R_xlen_t)n) return A->status = VB_BAD_INPUT;
    const double *p = REAL(v);
    for (int i = 0; i < 3 * n; i++)
        if (!R_FINITE(p[i])) return A->status = VB_BAD_INPUT;
    memcpy(f, p, sizeof(double) * n);
    memcpy(df, p + n, sizeof(double) * n);
    memcpy(d2f, p + 2 * n, sizeof(double) * n);
    return VB_OK;
}

/* ------------------------------------------------------- the log joint -- */

/* layer l's values: the data for l = 0, else the latent state */
static const double *layer(const pc_model *M, const double *y0, const double *x, int l) {
    return l == 0 ? y0 : x + M->xo[l];
}

/* Residuals, errors, ln p(x_0, x) and its gradient at x; W_l' eps_{l-1} kept in wte. */
static int pc_eval(const pc_model *M, pc_ws *w, const double *y0, const double *x) {
    int L = M->L, st;
    for (int l = 1; l <= L; l++) {
        int o = M->xo[l];
        if ((st = act_eval((pc_act *)&M->act, M->n[l], x + o, w->f + o, w->df + o, w->d2f + o)))
            return st;
    }
    double lp = 0;
    for (int l = 0; l <= L; l++) {
        int nl = M->n[l];
        double *r = w->r + M->ro[l], *eps = w->eps + M->ro[l];
        const double *xl = layer(M, y0, x, l);
        for (int i = 0; i < nl; i++)
            r[i] = xl[i];
        if (l < L)
            gemv("N", nl, M->n[l + 1], -1.0, W_(M, l + 1), w->f + M->xo[l + 1], 1.0, r);
        else
            for (int i = 0; i < nl; i++)
                r[i] -= M->theta[M->muoff + i];
        gemv("N", nl, nl, 1.0, P_(M, l), r, 0.0, eps);
        double q = 0;
        for (int i = 0; i < nl; i++)
            q += r[i] * eps[i];
        lp -= 0.5 * (nl * VB_LOG2PI + M->ld[l] + q);
    }
    for (int l = 1; l <= L; l++) {
        int o = M->xo[l], nl = M->n[l];
        gemv("T", M->n[l - 1], nl, 1.0, W_(M, l), w->eps + M->ro[l - 1], 0.0, w->wte + o);
        for (int i = 0; i < nl; i++)
            w->g[o + i] = -w->eps[M->ro[l] + i] + w->df[o + i] * w->wte[o + i];
    }
    w->lp = lp;
    if (!R_FINITE(lp)) return VB_NONFINITE;
    for (int i = 0; i < M->nx; i++)
        if (!R_FINITE(w->g[i])) return VB_NONFINITE;
    return VB_OK;
}

/* The negative Hessian's blocks (padded to d), after pc_eval; H0 the data term's block. */
static void pc_hess(const pc_model *M, pc_ws *w, double shift) {
    int L = M->L, d = M->d;
    size_t dd = (size_t)d * d;
    memset(w->D, 0, sizeof(double) * dd * L);
    memset(w->Lb, 0, sizeof(double) * dd * L);
    for (int t = 0; t < L; t++) {
        int l = t + 1, nl = M->n[l], np = M->n[l - 1], o = M->xo[l];
        double *D = w->D + t * dd, *U = w->tmp, *V = w->tmp2;
        const double *P = P_(M, l), *df = w->df + o;
        /* U = P_{l-1} W_l (np x nl), V = W_l' U (nl x nl) */
        if (np > 0) {
            gemm("N", "N", np, nl, np, 1.0, P_(M, l - 1), np, W_(M, l), np, 0.0, U, np);
            gemm("T", "N", nl, nl, np, 1.0, W_(M, l), np, U, np, 0.0, V, nl);
        } else
            memset(V, 0, sizeof(double) * nl * nl);
        for (int j = 0; j < nl; j++)
            for (int i = 0; i < nl; i++) {
                double h = df[i] * V[i + j * nl] * df[j];
                if (i == j) h -= w->d2f[o + i] * w->wte[o + i];
                if (t == 0) w->H0[i + j * nl] = h;
                D[i + j * d] = P[i + j * nl] + h + (i == j ? shift : 0);
            }
        for (int i = nl; i < d; i++)
            D[i + i * d] = 1;
        if (t > 0) {
            double *Lt = w->Lb + t * dd; /* Lambda_{l, l-1} = -J_l W_l' P_{l-1}: nl x np */
            for (int j = 0; j < np; j++)
                for (int i = 0; i < nl; i++)
                    Lt[i + j * d] = -df[i] * U[j + i * np];
        }
    }
}

static int pc_solve(const pc_model *M, pc_ws *w, double *logdet) {
    int d = M->d;
    memset(w->b, 0, sizeof(double) * d * M->L);
    for (int t = 0; t < M->L; t++)
        memcpy(w->b + t * d, w->g + M->xo[t + 1], sizeof(double) * M->n[t + 1]);
    return vb_btd_solve(M->L, d, w->D, w->Lb, (size_t)d * d, w->b, w->m, w->S, w->Sc, logdet,
                        w->bw);
}

/* the Newton direction from w->m (padded) into step; returns g' step */
static double pc_step_from_m(const pc_model *M, pc_ws *w) {
    double dec = 0;
    for (int t = 0; t < M->L; t++) {
        int o = M->xo[t + 1];
        for (int i = 0; i < M->n[t + 1]; i++) {
            w->step[o + i] = w->m[t * M->d + i];
            dec += w->g[o + i] * w->step[o + i];
        }
    }
    return dec;
}

/* Hessian at the current point (shifted until PD when shift_ok), direction, decrement. */
static int pc_newton_dir(const pc_model *M, pc_ws *w, int shift_ok, double *dec, double *logdet) {
    double lam = 0;
    int st;
    for (int k = 0; k < 60; k++) {
        pc_hess(M, w, lam);
        st = pc_solve(M, w, logdet);
        if (st != VB_NOT_PD || !shift_ok) break;
        lam = lam == 0 ? 1e-8 : 10 * lam;
    }
    if (st != VB_OK) return st;
    *dec = pc_step_from_m(M, w);
    return R_FINITE(*dec) ? VB_OK : VB_NONFINITE;
}

typedef struct {
    const pc_model *M;
    pc_ws *w;
    const double *y0;
} newton_ctx;

static int newton_try(double a, void *ctx, double *value) {
    newton_ctx *c = (newton_ctx *)ctx;
    pc_ws *w = c->w;
    for (int i = 0; i < c->M->nx; i++)
        w->xt[i] = w->x[i] + a * w->step[i];
    int st = pc_eval(c->M, w, c->y0, w->xt);
    *value = w->lp;
    if (st == VB_NONFINITE) {
        *value = R_NegInf;
        return VB_OK;
    }
    return st;
}

/* ------------------------------------------------------------ inference -- */

/* Start of a trial: x_L = mu, x_{l-1} = W_l f(x_l). */
static int pc_topdown(const pc_model *M, pc_ws *w) {
    int L = M->L, st;
    memcpy(w->x + M->xo[L], M->theta + M->muoff, sizeof(double) * M->n[L]);
    for (int l = L; l >= 2; l--) {
        int o = M->xo[l];
        if ((st = act_eval((pc_act *)&M->act, M->n[l], w->x + o, w->f + o, w->df + o, w->d2f + o)))
            return st;
        gemv("N", M->n[l - 1], M->n[l], 1.0, W_(M, l), w->f + o, 0.0, w->x + M->xo[l - 1]);
    }
    return VB_OK;
}

static int met(double dec, double lp, double tol) {
    return R_FINITE(dec) && dec / 2 <= tol * (fabs(lp) + tol);
}

/* Newton from w->x; on return x is the mode and S, Sc, logdet the Laplace q. */
static int pc_newton(const pc_model *M, pc_ws *w, const double *y0, double *logdet, int *iters) {
    int st = pc_eval(M, w, y0, w->x);
    if (st) return st;
    newton_ctx c = {M, w, y0};
    for (int it = 1; it <= M->inner_maxit; it++) {
        double dec, a, val, old = w->lp;
        *iters = it;
        if ((st = pc_newton_dir(M, w, 1, &dec, logdet))) return st;
        int done = met(dec, old, M->inner_tol);
        st = vb_step_search(newton_try, &c, old, &a, &val);
        if (M->act.status != VB_OK) return M->act.status;
        if (st == VB_OK) {
            memcpy(w->x, w->xt, sizeof(double) * M->nx);
        } else if (st == VB_STALLED && done) {
            st = pc_eval(M, w, y0, w->x); /* already at the mode to rounding */
            if (st) return st;
        } else
            return st;
        if (done) {
            if ((st = pc_eval(M, w, y0, w->x))) return st;
            return pc_newton_dir(M, w, 0, &dec, logdet);
        }
        if (vb_interrupted()) return VB_INTERRUPTED;
    }
    double dec;
    if ((st = pc_eval(M, w, y0, w->x))) return st;
    if ((st = pc_newton_dir(M, w, 0, &dec, logdet))) return st;
    return met(dec, w->lp, M->inner_tol) ? VB_OK : VB_MAXIT;
}

/* Trajectory storage of one trial: states nx x nsteps, errors ntot x nsteps, e likewise. */
typedef struct {
    double *states, *errors, *inter;
    int nsteps;
} pc_traj;

static int pc_euler(const pc_model *M, pc_ws *w, const double *y0, double *logdet, pc_traj *tr) {
    int L = M->L, nx = M->nx, ntot = M->ntot, st;
    int nsteps = (int)fmax(1.0, nearbyint(M->t_max / M->dt));
    double dt = M->dt;
    memset(w->epsd, 0, sizeof(double) * ntot);
    memset(w->e, 0, sizeof(double) * ntot);
    for (int i = 0; i < nsteps; i++) {
        if ((st = pc_eval(M, w, y0, w->x))) return st;
        if (tr) {
            memcpy(tr->states + (size_t)i * nx, w->x, sizeof(double) * nx);
            memcpy(tr->errors + (size_t)i * ntot, M->errors == ERR_INSTANT ? w->eps : w->epsd,
                   sizeof(double) * ntot);
            if (tr->inter) memcpy(tr->inter + (size_t)i * ntot, w->e, sizeof(double) * ntot);
        }
        if (i == nsteps - 1) break;
        if (M->errors == ERR_INSTANT) {
            for (int k = 0; k < nx; k++)
                w->x[k] += dt * w->g[k];
        } else {
            /* every unit from the previous point: the state's drive from the error units */
            for (int l = 1; l <= L; l++) {
                int o = M->xo[l], nl = M->n[l];
                gemv("T", M->n[l - 1], nl, 1.0, W_(M, l), w->epsd + M->ro[l - 1], 0.0, w->step + o);
                for (int k = 0; k < nl; k++)
                    w->step[o + k] = -w->epsd[M->ro[l] + k] + w->df[o + k] * w->step[o + k];
            }
            for (int l = 0; l <= L; l++) {
                int nl = M->n[l], o = M->ro[l];
                double *ed = w->epsd + o, *e = w->e + o, *r = w->r + o, *se = w->tmp;
                gemv("N", nl, nl, 1.0, Sig_(M, l), ed, 0.0, se); /* Sigma eps */
                if (M->errors == ERR_DYNAMIC)
                    for (int k = 0; k < nl; k++)
                        ed[k] += dt * (r[k] - se[k]);
                else
                    for (int k = 0; k < nl; k++) {
                        ed[k] += dt * (r[k] - e[k]);
                        e[k] += dt * (se[k] - e[k]);
                    }
            }
            for (int k = 0; k < nx; k++)
                w->x[k] += dt * w->step[k];
        }
        if (i % 256 == 255 && vb_interrupted()) return VB_INTERRUPTED;
    }
    double dec;
    if ((st = pc_newton_dir(M, w, 0, &dec, logdet))) return st;
    return met(dec, w->lp, M->inner_tol) ? VB_OK : VB_MAXIT;
}

/* ------------------------------------------------- sufficient statistics -- */

/* Per-trial E[f f'] (A), E[x_{l-1} f'] (B), E[r r'] (R, at the current W) for each
 * l = 1..L, and E[x_L] (sx), E[x_L x_L'] (Sxx); covariance terms unless delta. */
typedef struct {
    double *A, *B, *R, *sx, *Sxx;
    int *aoff, *boff, *roff;
} pc_suff;

static void pc_trial_suff(const pc_model *M, pc_ws *w, const double *y0, pc_suff *s) {
    int L = M->L, d = M->d, lap = !M->delta;
    size_t dd = (size_t)d * d;
    for (int l = 1; l <= L; l++) {
        int nl = M->n[l], np = M->n[l - 1], o = M->xo[l];
        const double *f = w->f + o, *J = w->df + o, *xp = layer(M, y0, w->x, l - 1);
        const double *Sll = w->S + (l - 1) * dd;
        double *A = s->A + s->aoff[l], *B = s->B + s->boff[l], *R = s->R + s->roff[l - 1];
        for (int j = 0; j < nl; j++)
            for (int i = 0; i < nl; i++)
                A[i + j * nl] = f[i] * f[j] + (lap ? J[i] * Sll[i + j * d] * J[j] : 0);
        for (int j = 0; j < nl; j++)
            for (int i = 0; i < np; i++)
                B[i + j * np] = xp[i] * f[j];
        if (lap && l >= 2) {
            const double *Sc = w->Sc + (l - 1) * dd; /* Sigma_{l, l-1}, nl x np */
            for (int j = 0; j < nl; j++)
                for (int i = 0; i < np; i++)
                    B[i + j * np] += Sc[j + i * d] * J[j];
        }
        /* R = E[x x'] - W B' - B W' + W A W' for layer l-1 */
        const double *W = W_(M, l);
        for (int j = 0; j < np; j++)
            for (int i = 0; i < np; i++)
                R[i + j * np] =
                    xp[i] * xp[j] + (lap && l >= 2 ? w->S[(l - 2) * dd + i + (size_t)j * d] : 0);
        if (np > 0 && nl > 0) {
            double *WA = w->tmp; /* np x nl */
            gemm("N", "T", np, np, nl, -1.0, W, np, B, np, 1.0, R, np);
            gemm("N", "T", np, np, nl, -1.0, B, np, W, np, 1.0, R, np);
            gemm("N", "N", np, nl, nl, 1.0, W, np, A, nl, 0.0, WA, np);
            gemm("N", "T", np, np, nl, 1.0, WA, np, W, np, 1.0, R, np);
        }
    }
    int nL = M->n[L];
    const double *xL = w->x + M->xo[L], *SLL = w->S + (L - 1) * dd;
    for (int i = 0; i < nL; i++)
        s->sx[i] = xL[i];
    for (int j = 0; j < nL; j++)
        for (int i = 0; i < nL; i++)
            s->Sxx[i + j * nL] = xL[i] * xL[j] + (lap ? SLL[i + j * d] : 0);
}

static void pc_project(int n, double *S, int cov) {
    if (cov == COV_FULL) {
        for (int j = 0; j < n; j++)
            for (int i = j + 1; i < n; i++)
                S[i + j * n] = S[j + i * n] = 0.5 * (S[i + j * n] + S[j + i * n]);
        return;
    }
    double tr = 0;
    for (int i = 0; i < n; i++)
        tr += S[i + i * n];
    for (int j = 0; j < n; j++)
        for (int i = 0; i < n; i++)
            if (i != j)
                S[i + j * n] = 0;
            else if (cov == COV_ISO)
                S[i + i * n] = tr / n;
}

/* ------------------------------------------------------------- fitting -- */

typedef struct {
    /* per trial outputs */
    double **mean, **cov, **cross, **err; /* layer arrays */
    double *F, *ll;
    int *tstatus, *titer;
    pc_traj traj; /* the final E-step's trajectories, NULL arrays when not kept */
    int keep_traj;
    /* the E-step's totals */
    double Ftot, Jtot, lltot;
    pc_suff tot, one;
    double *ytrace; /* online: diag Sigma_0 after each trial update */
    int ytrace_n;
    int collapsed;
    double *scale0; /* mean initial diagonal of each Sigma_l (collapse test) */
} pc_run;

static void suff_zero(const pc_model *M, pc_suff *s, int total) {
    memset(s->A, 0, sizeof(double) * total);
    (void)M;
}

/* One pass over trials at fixed parameters (online: updating after each trial). */
static int pc_estep(pc_model *M, pc_ws *w, pc_run *R, int warm, int record, int online) {
    int L = M->L, N = M->N, d = M->d, st = VB_OK;
    size_t dd = (size_t)d * d;
    R->Ftot = R->Jtot = R->lltot = 0;
    int atot =
        R->tot.aoff[L + 1] + R->tot.boff[L + 1] + R->tot.roff[L] + M->n[L] + M->n[L] * M->n[L];
    suff_zero(M, &R->tot, atot);
    double *y0 = w->y0;
    for (int t = 0; t < N; t++) {
        for (int i = 0; i < M->n[0]; i++)
            y0[i] = M->y[t + (size_t)i * N];
        if (warm && M->inference == 0)
            for (int l = 1; l <= L; l++)
                for (int i = 0; i < M->n[l]; i++)
                    w->x[M->xo[l] + i] = R->mean[l][t + (size_t)i * N];
        else if ((st = pc_topdown(M, w)))
            return st;
        double logdet = 0;
        int it = 0;
        pc_traj tr = R->traj, *trp = NULL;
        if (record && R->keep_traj && M->inference == 1) {
            size_t ns = tr.nsteps;
            tr.states += (size_t)t * ns * M->nx;
            tr.errors += (size_t)t * ns * M->ntot;
            if (tr.inter) tr.inter += (size_t)t * ns * M->ntot;
            trp = &tr;
        }
        if (M->inference == 0)
            st = pc_newton(M, w, y0, &logdet, &it);
        else {
            st = pc_euler(M, w, y0, &logdet, trp);
            it = (int)fmax(1.0, nearbyint(M->t_max / M->dt)) - 1;
        }
        R->tstatus[t] = st;
        R->titer[t] = it;
        if (st != VB_OK && st != VB_MAXIT) return st;
        /* outputs of the trial */
        double F = w->lp + 0.5 * (M->nx * VB_LOG2PI + logdet);
        double ll = -0.5 * (M->n[0] * VB_LOG2PI + M->ld[0]), tr0 = 0;
        for (int i = 0; i < M->n[0]; i++)
            ll -= 0.5 * w->r[i] * w->eps[i];
        for (int j = 0; j < M->n[1]; j++)
            for (int i = 0; i < M->n[1]; i++)
                tr0 += w->H0[i + j * M->n[1]] * w->S[j + (size_t)i * d];
        ll -= 0.5 * tr0;
        R->F[t] = F;
        R->ll[t] = ll;
        R->Ftot += F;
        R->Jtot += w->lp;
        R->lltot += ll;
        for (int l = 1; l <= L; l++) {
            int nl = M->n[l];
            for (int i = 0; i < nl; i++)
                R->mean[l][t + (size_t)i * N] = w->x[M->xo[l] + i];
            double *C = R->cov[l] + (size_t)t * nl * nl;
            for (int j = 0; j < nl; j++)
                for (int i = 0; i < nl; i++)
                    C[i + j * nl] = w->S[(l - 1) * dd + i + (size_t)j * d];
            if (l < L) {
                int nn = M->n[l + 1];
                double *X = R->cross[l] + (size_t)t * nl * nn; /* Sigma_{l,l+1} */
                for (int j = 0; j < nn; j++)
                    for (int i = 0; i < nl; i++)
                        X[i + j * nl] = w->Sc[l * dd + j + (size_t)i * d];
            }
        }
        for (int l = 0; l <= L; l++)
            for (int i = 0; i < M->n[l]; i++)
                R->err[l][t + (size_t)i * N] = w->eps[M->ro[l] + i];
        /* statistics */
        pc_trial_suff(M, w, y0, &R->one);
        for (int k = 0; k < atot; k++)
            R->tot.A[k] += R->one.A[k];
        if (online) {
            double lr = M->lr;
            for (int l = 1; l <= L && M->lw; l++) {
                int nl = M->n[l], np = M->n[l - 1];
                double *G = w->tmp; /* B - W A : np x nl */
                memcpy(G, R->one.B + R->one.boff[l], sizeof(double) * np * nl);
                if (np > 0 && nl > 0) {
                    gemm("N", "N", np, nl, nl, -1.0, W_(M, l), np, R->one.A + R->one.aoff[l], nl,
                         1.0, G, np);
                    gemm("N", "N", np, nl, np, lr, P_(M, l - 1), np, G, np, 1.0, W_(M, l), np);
                }
            }
            for (int l = 0; l <= L; l++) {
                int learn = l < L ? M->lprec : M->lprior;
                if (!learn) continue;
                int nl = M->n[l];
                double *E = l < L ? R->one.R + R->one.roff[l] : w->tmp, *PE = w->tmp2;
                if (l == L) { /* E[(x_L - mu)(x_L - mu)'] */
                    const double *mu = M->theta + M->muoff, *sx = R->one.sx;
                    for (int j = 0; j < nl; j++)
                        for (int i = 0; i < nl; i++)
                            E[i + j * nl] = R->one.Sxx[i + j * nl] - sx[i] * mu[j] - mu[i] * sx[j] +
                                            mu[i] * mu[j];
                }
                if (M->errors == ERR_INTERNEURON && M->inference == 1) {
                    const double *ed = w->epsd + M->ro[l], *e = w->e + M->ro[l];
                    for (int j = 0; j < nl; j++)
                        for (int i = 0; i < nl; i++)
                            PE[i + j * nl] = ed[i] * e[j];
                    if (!M->delta) { /* + P (E[rr'] - r r'), the covariance part */
                        const double *r = w->r + M->ro[l];
                        for (int j = 0; j < nl; j++)
                            for (int i = 0; i < nl; i++)
                                E[i + j * nl] -= r[i] * r[j];
                        gemm("N", "N", nl, nl, nl, 1.0, P_(M, l), nl, E, nl, 1.0, PE, nl);
                    }
                } else if (nl > 0)
                    gemm("N", "N", nl, nl, nl, 1.0, P_(M, l), nl, E, nl, 0.0, PE, nl);
                double *S = Sig_(M, l);
                for (int j = 0; j < nl; j++)
                    for (int i = 0; i < nl; i++)
                        S[i + j * nl] +=
                            lr * (0.5 * (PE[i + j * nl] + PE[j + i * nl]) - (i == j ? 1.0 : 0.0));
                pc_project(nl, S, M->cov);
            }
            if (M->lprior)
                for (int i = 0; i < M->n[L]; i++)
                    M->theta[M->muoff + i] += lr * w->eps[M->ro[L] + i];
            if (R->ytrace && R->ytrace_n < N * M->maxit) {
                for (int i = 0; i < M->n[0]; i++)
                    R->ytrace[R->ytrace_n + (size_t)i * N * M->maxit] = Sig_(M, 0)[i + i * M->n[0]];
                R->ytrace_n++;
            }
            if ((st = pc_precisions(M))) return st;
        }
        if (t % 16 == 15 && vb_interrupted()) return VB_INTERRUPTED;
    }
    return VB_OK;
}

/* The batch M-step from R->tot into theta (a copy of the current parameters). */
static int pc_mstep(const pc_model *M, pc_run *R, double *theta, double *work) {
    int L = M->L, N = M->N;
    pc_suff *s = &R->tot;
    for (int l = 1; l <= L && M->lw; l++) {
        int nl = M->n[l], np = M->n[l - 1];
        double *A = work, *Wn = theta + M->woff[l];
        memcpy(A, s->A + s->aoff[l], sizeof(double) * nl * nl);
        int info = vb_chol(nl, A, nl);
        if (info) return vb_lapack_status(info);
        /* W' = A^{-1} B', row by row of W */
        const double *B = s->B + s->boff[l];
        double *row = work + nl * nl;
        for (int i = 0; i < np; i++) {
            for (int j = 0; j < nl; j++)
                row[j] = B[i + j * np];
            vb_chol_solve(nl, A, nl, row);
            for (int j = 0; j < nl; j++)
                Wn[i + j * np] = row[j];
        }
    }
    for (int l = 0; l < L && M->lprec; l++) {
        /* E[r r'] at the new W: Sxx - W B' - B W' + W A W', from R at the old W and
         * the change: simpler to recompute from the parts kept in R (old W) */
        int np = M->n[l], nl = M->n[l + 1];
        const double *Wo = W_(M, l + 1), *Wn = theta + M->woff[l + 1];
        const double *A = s->A + s->aoff[l + 1], *B = s->B + s->boff[l + 1];
        double *S = theta + M->soff[l], *Dl = work, *T1 = work + np * nl;
        memcpy(S, s->R + s->roff[l], sizeof(double) * np * np);
        /* R(Wn) = R(Wo) - (Wn-Wo)B' - B(Wn-Wo)' + Wn A Wn' - Wo A Wo' */
        if (np > 0 && nl > 0) {
            for (int k = 0; k < np * nl; k++)
                Dl[k] = Wn[k] - Wo[k];
            gemm("N", "T", np, np, nl, -1.0, Dl, np, B, np, 1.0, S, np);
            gemm("N", "T", np, np, nl, -1.0, B, np, Dl, np, 1.0, S, np);
            gemm("N", "N", np, nl, nl, 1.0, Wn, np, A, nl, 0.0, T1, np);
            gemm("N", "T", np, np, nl, 1.0, T1, np, Wn, np, 1.0, S, np);
            gemm("N", "N", np, nl, nl, 1.0, Wo, np, A, nl, 0.0, T1, np);
            gemm("N", "T", np, np, nl, -1.0, T1, np, Wo, np, 1.0, S, np);
        }
        for (int k = 0; k < np * np; k++)
            S[k] /= N;
        pc_project(np, S, M->cov);
    }
    if (M->lprior) {
        int nL = M->n[L];
        double *mu = theta + M->muoff, *S = theta + M->soff[L];
        for (int i = 0; i < nL; i++)
            mu[i] = s->sx[i] / N;
        for (int j = 0; j < nL; j++)
            for (int i = 0; i < nL; i++)
                S[i + j * nL] = s->Sxx[i + j * nL] / N - mu[i] * mu[j];
        pc_project(nL, S, M->cov);
    }
    return VB_OK;
}

/* a learned variance below 1e-10 of its start: the collapse of the delta rule */
static int pc_collapsed(const pc_model *M, const pc_run *R, const double *theta) {
    for (int l = 0; l <= M->L; l++) {
        int learn = l < M->L ? M->lprec : M->lprior;
        if (!learn) continue;
        const double *S = theta + M->soff[l];
        for (int i = 0; i < M->n[l]; i++)
            if (!(S[i + i * M->n[l]] > 1e-10 * R->scale0[l])) return l + 1;
    }
    return 0;
}

typedef struct {
    pc_model *M;
    pc_ws *w;
    pc_run *R;
    const double *old, *new_;
} em_ctx;

static int em_try(double a, void *ctx, double *value) {
    em_ctx *c = (em_ctx *)ctx;
    pc_model *M = c->M;
    for (int k = 0; k < M->ntheta; k++)
        M->theta[k] = c->old[k] + a * (c->new_[k] - c->old[k]);
    int st = pc_precisions(M);
    if (st) return st;
    st = pc_estep(M, c->w, c->R, 1, 0, 0);
    *value = M->delta ? c->R->Jtot : c->R->Ftot;
    if (st == VB_NONFINITE) {
        *value = R_NegInf;
        return VB_OK;
    }
    return st == VB_MAXIT ? VB_OK : st;
}

static int pc_fit(pc_model *M, pc_ws *w, pc_run *R, vb_trace *ftr, vb_trace *jtr, int *iters) {
    int learn = M->lw || M->lprec || M->lprior, st;
    vb_progress pr;
    vb_progress_init(&pr, M->quiet);
    *iters = 0;
    if ((st = pc_precisions(M))) return st;
    if (!learn) {
        st = pc_estep(M, w, R, 0, 1, 0);
        if (st == VB_OK || st == VB_MAXIT) {
            vb_trace_push(ftr, R->Ftot);
            vb_trace_push(jtr, R->Jtot);
        }
        return st;
    }
    if (M->lr > 0) { /* online: maxit passes, then a last pass at the final parameters */
        double prev = R_NaN;
        int conv = 0;
        for (int it = 1; it <= M->maxit; it++) {
            *iters = it;
            st = pc_estep(M, w, R, it > 1, 0, 1);
            if (st != VB_OK && st != VB_MAXIT) return st;
            if ((R->collapsed = pc_collapsed(M, R, M->theta))) return VB_NOT_PD;
            double obj = M->delta ? R->Jtot : R->Ftot;
            vb_trace_push(ftr, R->Ftot);
            vb_trace_push(jtr, R->Jtot);
            vb_progress_tick(&pr, "vb_predictive_coding", it, R->Ftot);
            conv = vb_tol_met(prev, obj, M->tol);
            prev = obj;
            if (conv) break;
        }
        if ((st = pc_estep(M, w, R, 1, 1, 0)) != VB_OK && st != VB_MAXIT) return st;
        return conv ? VB_OK : VB_MAXIT;
    }
    double *old = (double *)R_alloc(M->ntheta, sizeof(double));
    double *nw = (double *)R_alloc(M->ntheta, sizeof(double));
    int dmax = 0;
    for (int l = 0; l <= M->L; l++)
        dmax = M->n[l] > dmax ? M->n[l] : dmax;
    double *work = (double *)R_alloc((size_t)3 * dmax * dmax + dmax, sizeof(double));
    st = pc_estep(M, w, R, 0, 0, 0);
    if (st != VB_OK && st != VB_MAXIT) return st;
    double obj = M->delta ? R->Jtot : R->Ftot;
    vb_trace_push(ftr, R->Ftot);
    vb_trace_push(jtr, R->Jtot);
    em_ctx c = {M, w, R, old, nw};
    st = VB_MAXIT;
    for (int it = 1; it <= M->maxit; it++) {
        *iters = it;
        memcpy(old, M->theta, sizeof(double) * M->ntheta);
        memcpy(nw, M->theta, sizeof(double) * M->ntheta);
        int ms = pc_mstep(M, R, nw, work);
        if (ms) {
            st = ms;
            break;
        }
        if ((R->collapsed = pc_collapsed(M, R, nw))) {
            st = VB_NOT_PD;
            break;
        }
        double a, val;
        int ss = vb_step_search(em_try, &c, obj, &a, &val);
        if (M->act.status != VB_OK) return M->act.status;
        if (ss != VB_OK) { /* back to the last accepted parameters */
            memcpy(M->theta, old, sizeof(double) * M->ntheta);
            if (ss != VB_INTERRUPTED && pc_precisions(M) == VB_OK) pc_estep(M, w, R, 1, 0, 0);
            st = ss;
            break;
        }
        vb_trace_push(ftr, R->Ftot);
        vb_trace_push(jtr, R->Jtot);
        vb_progress_tick(&pr, "vb_predictive_coding", it, R->Ftot);
        int conv = vb_tol_met(obj, val, M->tol);
        obj = val;
        if (conv) {
            st = VB_OK;
            break;
        }
        if (vb_interrupted()) {
            st = VB_INTERRUPTED;
            break;
        }
    }
    if (st == VB_INTERRUPTED) return st;
    /* the outputs (and trajectories) at the final parameters */
    if (pc_precisions(M) == VB_OK) {
        int es = pc_estep(M, w, R, 1, 1, 0);
        if (es != VB_OK && es != VB_MAXIT && st == VB_OK) st = es;
    }
    return st;
}

/* ---------------------------------------------------------- entry point -- */

static SEXP list_elt_real(SEXP list, int i, R_xlen_t len, const char *what) {
    if (TYPEOF(list) != VECSXP || i >= Rf_xlength(list))
        Rf_error("'%s' must be a list with an element %d", what, i + 1);
    SEXP x = VECTOR_ELT(list, i);
    if (TYPEOF(x) != REALSXP || Rf_xlength(x) != len)
        Rf_error("'%s[[%d]]' must be a double array of %lld values", what, i + 1, (long long)len);
    for (R_xlen_t k = 0; k < len; k++)
        if (!R_FINITE(REAL(x)[k])) Rf_error("'%s[[%d]]' must be finite", what, i + 1);
    return x;
}

static SEXP array3(int a, int b, int c) {
    SEXP x = PROTECT(Rf_allocVector(REALSXP, (R_xlen_t)a * b * c));
    SEXP dim = PROTECT(Rf_allocVector(INTSXP, 3));
    INTEGER(dim)[0] = a;
    INTEGER(dim)[1] = b;
    INTEGER(dim)[2] = c;
    Rf_setAttrib(x, R_DimSymbol, dim);
    memset(REAL(x), 0, sizeof(double) * (size_t)a * b * c);
    UNPROTECT(2);
    return x;
}

/*
 * C_pc_fit(y, model, control, holder).
 * y: N x n_0 double matrix.  model: list(n = integer sizes n_0..n_L, W = list of L
 * matrices n_{l-1} x n_l, Sigma = list of L+1 SPD matrices, mu = n_L, act = 0/1/2,
 * fn = function(x) (act 2), learn_w, learn_prec, learn_prior, delta, inference
 * (0 newton, 1 euler), errors (0/1/2), cov (0 full, 1 diagonal, 2 isotropic)).
 * control: list(maxit, tol, quiet, dt, t_max, inner_maxit, inner_tol, lr, trajectory).
 * holder: list of 2 (the activation's failure condition lands in [[1]]).
 */
SEXP C_pc_fit(SEXP y, SEXP model, SEXP control, SEXP holder) {
    pc_model M;
    memset(&M, 0, sizeof M);
    const char *mw = "model", *cw = "control";
    SEXP ydim = Rf_getAttrib(y, R_DimSymbol);
    if (TYPEOF(y) != REALSXP || TYPEOF(ydim) != INTSXP || Rf_xlength(ydim) != 2 ||
        INTEGER(ydim)[0] < 1 || INTEGER(ydim)[1] < 1)
        Rf_error("pc: 'y' must be a double matrix with at least one row and column");
    for (R_xlen_t k = 0; k < Rf_xlength(y); k++)
        if (!R_FINITE(REAL(y)[k])) Rf_error("pc: 'y' must be finite");
    if (TYPEOF(holder) != VECSXP || Rf_xlength(holder) != 2)
        Rf_error("pc: 'holder' must be a list of length 2");
    SEXP ns = vb_elt_req(model, "n", mw);
    if (TYPEOF(ns) != INTSXP || Rf_xlength(ns) < 2 || Rf_xlength(ns) > 1000)
        Rf_error("pc: 'model$n' must be an integer vector of 2 to 1000 layer sizes");
    M.L = (int)Rf_xlength(ns) - 1;
    M.N = INTEGER(ydim)[0];
    M.n = (int *)R_alloc(M.L + 1, sizeof(int));
    for (int l = 0; l <= M.L; l++) {
        M.n[l] = INTEGER(ns)[l];
        if (M.n[l] == NA_INTEGER || M.n[l] < 1 || M.n[l] > 5000)
            Rf_error("pc: 'model$n' must hold layer sizes between 1 and 5000");
    }
    if (M.n[0] != INTEGER(ydim)[1]) Rf_error("pc: 'y' must have model$n[1] columns");
    M.y = REAL(y);
    M.xo = (int *)R_alloc(M.L + 1, sizeof(int));
    M.ro = (int *)R_alloc(M.L + 1, sizeof(int));
    M.woff = (int *)R_alloc(M.L + 2, sizeof(int));
    M.soff = (int *)R_alloc(M.L + 1, sizeof(int));
    M.poff = (int *)R_alloc(M.L + 1, sizeof(int));
    M.nx = 0;
    M.d = 0;
    for (int l = 1; l <= M.L; l++) {
        M.xo[l] = M.nx;
        M.nx += M.n[l];
        if (M.n[l] > M.d) M.d = M.n[l];
    }
    M.xo[0] = 0;
    M.ntot = M.n[0] + M.nx;
    M.ro[0] = 0;
    for (int l = 1; l <= M.L; l++)
        M.ro[l] = M.n[0] + M.xo[l];
    double big = 0;
    int k = 0;
    for (int l = 1; l <= M.L; l++) {
        M.woff[l] = k;
        k += M.n[l - 1] * M.n[l];
    }
    for (int l = 0; l <= M.L; l++) {
        M.soff[l] = k;
        M.poff[l] = M.soff[l] - M.soff[0];
        k += M.n[l] * M.n[l];
        big += (double)M.n[l] * M.n[l];
    }
    if (big > 5e7 || (double)M.d * M.d * M.L > 5e7)
        Rf_error("pc: the layers are too large for this engine");
    M.muoff = k;
    k += M.n[M.L];
    M.ntheta = k;
    M.theta = (double *)R_alloc(M.ntheta, sizeof(double));
    M.P = (double *)R_alloc(M.ntheta - M.soff[0], sizeof(double));
    M.ld = (double *)R_alloc(M.L + 1, sizeof(double));
    SEXP Ws = vb_elt_req(model, "W", mw), Ss = vb_elt_req(model, "Sigma", mw);
    if (TYPEOF(Ws) != VECSXP || Rf_xlength(Ws) != M.L)
        Rf_error("pc: 'model$W' must be a list of %d matrices", M.L);
    if (TYPEOF(Ss) != VECSXP || Rf_xlength(Ss) != M.L + 1)
        Rf_error("pc: 'model$Sigma' must be a list of %d matrices", M.L + 1);
    for (int l = 1; l <= M.L; l++)
        memcpy(W_(&M, l), REAL(list_elt_real(Ws, l - 1, (R_xlen_t)M.n[l - 1] * M.n[l], "model$W")),
               sizeof(double) * M.n[l - 1] * M.n[l]);
    for (int l = 0; l <= M.L; l++)
        memcpy(Sig_(&M, l), REAL(list_elt_real(Ss, l, (R_xlen_t)M.n[l] * M.n[l], "model$Sigma")),
               sizeof(double) * M.n[l] * M.n[l]);
    const double *mu = vb_real_elt(model, "mu", M.n[M.L], mw);
    for (int i = 0; i < M.n[M.L]; i++) {
        if (!R_FINITE(mu[i])) Rf_error("pc: 'model$mu' must be finite");
        M.theta[M.muoff + i] = mu[i];
    }
    M.act.type = vb_int_elt(model, "act", 0, 2, mw);
    M.act.holder = holder;
    M.act.status = VB_OK;
    if (M.act.type == ACT_R) {
        M.act.fn = vb_elt_req(model, "fn", mw);
        if (!Rf_isFunction(M.act.fn)) Rf_error("pc: 'model$fn' must be a function");
    }
    M.lw = vb_flag_elt(model, "learn_w", mw);
    M.lprec = vb_flag_elt(model, "learn_prec", mw);
    M.lprior = vb_flag_elt(model, "learn_prior", mw);
    M.delta = vb_flag_elt(model, "delta", mw);
    M.inference = vb_int_elt(model, "inference", 0, 1, mw);
    M.errors = vb_int_elt(model, "errors", 0, 2, mw);
    M.cov = vb_int_elt(model, "cov", 0, 2, mw);
    M.maxit = vb_int_elt(control, "maxit", 1, 10000000, cw);
    M.tol = vb_num_elt(control, "tol", 0, R_PosInf, cw);
    if (!(M.tol > 0)) Rf_error("pc: 'control$tol' must be positive");
    M.quiet = vb_flag_elt(control, "quiet", cw);
    M.dt = vb_num_elt(control, "dt", 0, R_PosInf, cw);
    M.t_max = vb_num_elt(control, "t_max", 0, R_PosInf, cw);
    if (!(M.dt > 0) || !(M.t_max >= M.dt) || M.t_max / M.dt > 1e8)
        Rf_error("pc: 'control$dt' and 't_max' must satisfy 0 < dt <= t_max <= 1e8 dt");
    M.inner_maxit = vb_int_elt(control, "inner_maxit", 1, 100000, cw);
    M.inner_tol = vb_num_elt(control, "inner_tol", 0, R_PosInf, cw);
    if (!(M.inner_tol > 0)) Rf_error("pc: 'control$inner_tol' must be positive");
    M.lr = vb_num_elt(control, "lr", 0, R_PosInf, cw);
    M.traj = vb_flag_elt(control, "trajectory", cw);
    if (M.lr > 0 && (double)M.N * M.maxit > 1e9) Rf_error("pc: too many online updates");

    /* workspace */
    pc_ws w;
    int d = M.d, nx = M.nx, ntot = M.ntot, dmax = d > M.n[0] ? d : M.n[0];
    size_t dd = (size_t)d * d, Ld = dd * M.L;
    w.x = (double *)R_alloc(nx, sizeof(double));
    w.f = (double *)R_alloc(nx, sizeof(double));
    w.df = (double *)R_alloc(nx, sizeof(double));
    w.d2f = (double *)R_alloc(nx, sizeof(double));
    w.wte = (double *)R_alloc(nx, sizeof(double));
    w.g = (double *)R_alloc(nx, sizeof(double));
    w.xt = (double *)R_alloc(nx, sizeof(double));
    w.step = (double *)R_alloc(nx, sizeof(double));
    w.r = (double *)R_alloc(ntot, sizeof(double));
    w.eps = (double *)R_alloc(ntot, sizeof(double));
    w.epsd = (double *)R_alloc(ntot, sizeof(double));
    w.e = (double *)R_alloc(ntot, sizeof(double));
    w.D = (double *)R_alloc(Ld, sizeof(double));
    w.Lb = (double *)R_alloc(Ld, sizeof(double));
    w.S = (double *)R_alloc(Ld, sizeof(double));
    w.Sc = (double *)R_alloc(Ld, sizeof(double));
    w.b = (double *)R_alloc((size_t)d * M.L, sizeof(double));
    w.m = (double *)R_alloc((size_t)d * M.L, sizeof(double));
    w.bw = (double *)R_alloc(VB_BTD_WORK(d), sizeof(double));
    w.H0 = (double *)R_alloc((size_t)M.n[1] * M.n[1], sizeof(double));
    w.tmp = (double *)R_alloc((size_t)dmax * dmax, sizeof(double));
    w.tmp2 = (double *)R_alloc((size_t)dmax * dmax, sizeof(double));
    w.y0 = (double *)R_alloc(M.n[0], sizeof(double));
    memset(w.x, 0, sizeof(double) * nx);

    /* outputs */
    int np = 0, L = M.L, N = M.N;
    const char *nms[] = {"mean",
                         "cov",
                         "cross",
                         "errors",
                         "W",
                         "Sigma",
                         "mu",
                         "elbo",
                         "elbo_trial",
                         "loglik",
                         "status",
                         "iterations",
                         "trial_status",
                         "inner_iterations",
                         "elbo_trace",
                         "joint_trace",
                         "states",
                         "error_units",
                         "interneurons",
                         "obs_var_trace",
                         "collapsed",
                         "joint",
                         ""};
    SEXP out = vb_named_list(nms, &np);
    SEXP smean = PROTECT(Rf_allocVector(VECSXP, L)), scov = PROTECT(Rf_allocVector(VECSXP, L));
    SEXP scross = PROTECT(Rf_allocVector(VECSXP, L > 1 ? L - 1 : 0));
    SEXP serr = PROTECT(Rf_allocVector(VECSXP, L + 1));
    np += 4;
    SET_VECTOR_ELT(out, 0, smean);
    SET_VECTOR_ELT(out, 1, scov);
    SET_VECTOR_ELT(out, 2, scross);
    SET_VECTOR_ELT(out, 3, serr);
    pc_run R;
    memset(&R, 0, sizeof R);
    R.mean = (double **)R_alloc(L + 1, sizeof(double *));
    R.cov = (double **)R_alloc(L + 1, sizeof(double *));
    R.cross = (double **)R_alloc(L + 1, sizeof(double *));
    R.err = (double **)R_alloc(L + 1, sizeof(double *));
    for (int l = 1; l <= L; l++) {
        SEXP m = Rf_allocMatrix(REALSXP, N, M.n[l]);
        SET_VECTOR_ELT(smean, l - 1, m);
        R.mean[l] = REAL(m);
        memset(R.mean[l], 0, sizeof(double) * (size_t)N * M.n[l]);
        SEXP c = array3(M.n[l], M.n[l], N);
        SET_VECTOR_ELT(scov, l - 1, c);
        R.cov[l] = REAL(c);
        if (l < L) {
            SEXP x = array3(M.n[l], M.n[l + 1], N);
            SET_VECTOR_ELT(scross, l - 1, x);
            R.cross[l] = REAL(x);
        }
    }
    for (int l = 0; l <= L; l++) {
        SEXP e = Rf_allocMatrix(REALSXP, N, M.n[l]);
        SET_VECTOR_ELT(serr, l, e);
        R.err[l] = REAL(e);
        memset(R.err[l], 0, sizeof(double) * (size_t)N * M.n[l]);
    }
    SEXP sF = Rf_allocVector(REALSXP, N);
    SET_VECTOR_ELT(out, 8, sF);
    R.F = REAL(sF);
    R.ll = (double *)R_alloc(N, sizeof(double));
    SEXP sts = Rf_allocVector(INTSXP, N);
    SET_VECTOR_ELT(out, 12, sts);
    R.tstatus = INTEGER(sts);
    SEXP sit = Rf_allocVector(INTSXP, N);
    SET_VECTOR_ELT(out, 13, sit);
    R.titer = INTEGER(sit);
    for (int t = 0; t < N; t++) {
        R.F[t] = NA_REAL;
        R.ll[t] = NA_REAL;
        R.tstatus[t] = NA_INTEGER;
        R.titer[t] = 0;
    }
    int nsteps = (int)fmax(1.0, nearbyint(M.t_max / M.dt));
    R.keep_traj = M.traj && M.inference == 1;
    if (R.keep_traj) {
        if ((double)nsteps * ntot * N > 2e8) Rf_error("pc: the trajectory would be too large");
        SEXP a = array3(nx, nsteps, N);
        SET_VECTOR_ELT(out, 16, a);
        R.traj.states = REAL(a);
        SEXP b = array3(ntot, nsteps, N);
        SET_VECTOR_ELT(out, 17, b);
        R.traj.errors = REAL(b);
        if (M.errors == ERR_INTERNEURON) {
            SEXP c = array3(ntot, nsteps, N);
            SET_VECTOR_ELT(out, 18, c);
            R.traj.inter = REAL(c);
        }
        R.traj.nsteps = nsteps;
    }
    if (M.lr > 0 && M.lprec) {
        if ((double)N * M.maxit * M.n[0] > 1e8) Rf_error("pc: the online trace would be too large");
        SEXP a = Rf_allocMatrix(REALSXP, N * M.maxit, M.n[0]);
        SET_VECTOR_ELT(out, 19, a);
        R.ytrace = REAL(a);
        for (R_xlen_t i = 0; i < Rf_xlength(a); i++)
            R.ytrace[i] = NA_REAL;
    }
    /* statistics: A (n_l^2, l=1..L), B (n_{l-1} n_l), R (n_{l}^2, l=0..L-1), sx, Sxx,
     * one contiguous block so totals add in one loop */
    for (int pass = 0; pass < 2; pass++) {
        pc_suff *s = pass ? &R.one : &R.tot;
        s->aoff = (int *)R_alloc(L + 2, sizeof(int));
        s->boff = (int *)R_alloc(L + 2, sizeof(int));
        s->roff = (int *)R_alloc(L + 1, sizeof(int));
        int na = 0, nb = 0, nr = 0;
        for (int l = 1; l <= L; l++) {
            s->aoff[l] = na;
            na += M.n[l] * M.n[l];
            s->boff[l] = nb;
            nb += M.n[l - 1] * M.n[l];
        }
        s->aoff[L + 1] = na;
        s->boff[L + 1] = nb;
        for (int l = 0; l < L; l++) {
            s->roff[l] = nr;
            nr += M.n[l] * M.n[l];
        }
        s->roff[L] = nr;
        size_t tot = (size_t)na + nb + nr + M.n[L] + (size_t)M.n[L] * M.n[L];
        s->A = (double *)R_alloc(tot, sizeof(double));
        memset(s->A, 0, sizeof(double) * tot);
        s->B = s->A + na;
        s->R = s->B + nb;
        s->sx = s->R + nr;
        s->Sxx = s->sx + M.n[L];
    }
    R.scale0 = (double *)R_alloc(L + 1, sizeof(double));
    for (int l = 0; l <= L; l++) {
        double tr = 0;
        for (int i = 0; i < M.n[l]; i++)
            tr += Sig_(&M, l)[i + i * M.n[l]];
        R.scale0[l] = tr / M.n[l];
    }

    vb_trace ftr, jtr;
    vb_trace_init(&ftr);
    vb_trace_init(&jtr);
    int iters = 0;
    int status = pc_fit(&M, &w, &R, &ftr, &jtr, &iters);

    SEXP sW = PROTECT(Rf_allocVector(VECSXP, L)), sS = PROTECT(Rf_allocVector(VECSXP, L + 1));
    np += 2;
    SET_VECTOR_ELT(out, 4, sW);
    SET_VECTOR_ELT(out, 5, sS);
    for (int l = 1; l <= L; l++)
        SET_VECTOR_ELT(sW, l - 1, vb_real_mat(M.n[l - 1], M.n[l], W_(&M, l)));
    for (int l = 0; l <= L; l++)
        SET_VECTOR_ELT(sS, l, vb_real_mat(M.n[l], M.n[l], Sig_(&M, l)));
    SET_VECTOR_ELT(out, 6, vb_real_vec(M.n[L], M.theta + M.muoff));
    int ok = status == VB_OK || status == VB_MAXIT;
    SET_VECTOR_ELT(out, 7, Rf_ScalarReal(ok ? R.Ftot : NA_REAL));
    SET_VECTOR_ELT(out, 9, Rf_ScalarReal(ok ? R.lltot : NA_REAL));
    SET_VECTOR_ELT(out, 10, Rf_ScalarInteger(status));
    SET_VECTOR_ELT(out, 11, Rf_ScalarInteger(iters));
    SET_VECTOR_ELT(out, 14, vb_real_vec(ftr.n, ftr.x));
    SET_VECTOR_ELT(out, 15, vb_real_vec(jtr.n, jtr.x));
    SET_VECTOR_ELT(out, 20, Rf_ScalarInteger(R.collapsed));
    SET_VECTOR_ELT(out, 21, Rf_ScalarReal(ok ? R.Jtot : NA_REAL));
    UNPROTECT(np);
    return out;
}
