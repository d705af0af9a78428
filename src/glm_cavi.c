/*
 * glm_cavi.c — coordinate ascent for the Gaussian variational approximation
 * of a Bayesian GLM (the model: glm_model.c).
 *
 * q(beta) = N(mu, Sigma) with Sigma block-diagonal over a partition of the
 * coefficients (one block = fullrank, singletons = meanfield); gaussian adds
 * q(tau) = Gamma(A, B).
 *
 * Update (per block b, "fixed-point Newton" / NCVMP, a natural-gradient step):
 *   Lambda* = X_b' diag(-2 df/dv) X_b + diag(-2 dg/ds2),  g = X_b' df/dm + dg/dmu
 *   Lambda_a = (1-a) Lambda_b + a Lambda*,   mu_b += a Lambda_a^{-1} g,
 * with a from the step search (vb_step_search: 1, 1/2, ... until the ELBO does
 * not decrease), so the trace is monotone.  For the gaussian family a = 1 is
 * the exact coordinate optimum; q(tau) is then updated in closed form.  For
 * factorised q a joint Newton step on all the means (Sigma fixed) precedes
 * each sweep when p <= joint_means.  m and v (the linear predictor's mean and
 * variance) are kept up to date block by block rather than recomputed.
 *
 * Convergence (status VB_OK) needs, in the same sweep: every block step
 * accepted, the ELBO finite and not decreasing, its relative change within
 * tol, and the gain a full Newton step still predicts,
 *   sum_b 1/2 g_b' Sigma_b g_b + 1/4 || (Lambda_b - Lambda*_b) Sigma_b ||_F^2,
 * within tol too — a sweep that creeps along a flat ridge with tiny accepted
 * steps is not converged.  Fullrank q also stops, at the current q and
 * without the step, once a clean sweep (a full step whose gain the quadratic
 * model predicted within a factor 2, no step halving or mean extension) is
 * followed by a predicted gain within tol, certified by an upper bound that
 * needs no X'WX (pred_bound) or by the X'WX of the next step; its steps are
 * over-relaxed by the sweeps' estimated linear rate (fullrank_step).
 * Otherwise the status says why it stopped.
 *
 * Inputs: model list (glm_model.c), init (mu, tau shape, tau rate[, a p x p
 * starting precision: a warm start, its block entries used]), block ids
 * (0..nb-1, one per coefficient), control (the vb_control() list).
 * Cost per sweep: sum_b n k_b^2 (syrk + trsm) plus n expectations per block
 * trial; O(np) for meanfield, about 2np^2 + p^3/3 for fullrank.  Memory O(np + p^2).
 */
#include "vbayes.h"

typedef struct {
    vb_glm *M;
    int nb, *bstart, *idx;  /* block b holds idx[bstart[b] .. bstart[b+1]-1] */
    double *mu, *Lam, *Sig; /* p, p x p (block entries used), p x p       */
    double *m, *v;          /* linear predictor mean (with offset), variance */
    double A, B;            /* q(tau) = Gamma(A, B) for gaussian           */
    double *Xb, *Z, *vold, *mt, *vt, *dm, *dv, *dmt, *dvt, *work; /* n or n x kmax */
    int grad_ok;      /* dm, dv hold the derivatives at the current (m, v) */
    int g_raw;        /* g holds X' dm at the current (m, v) (pred_bound, one block) */
    const double *Xk; /* columns of the block being updated (Xb, or X itself) */
    double *Lb, *Rb, *Lcur, *Scur, *La, *Sa; /* kmax x kmax    */
    double *g, *delta, *mub, *mua;           /* kmax           */
    double pred;                             /* predicted gain of this sweep */
    int full;                                /* this sweep: full steps, no extension */
    double omega;                            /* over-relaxation of the next step */
    double *Dw, *Pw, *Ds, *Ps;               /* n, p, n, p: see pred_bound() */
    int dw_ok;                               /* Lam = X' diag(Dw) X + diag(Pw) */
    int joint;                               /* joint mean steps on         */
    int jH_fresh;                            /* jH holds a reusable factor   */
    int diag;                                /* meanfield: all variances at once */
    double *dL, *dg, *dmu, *ds2;             /* p each, for diag_step        */
    double *jH, *jg, *jd, *jw;               /* p x p, p, p, chunk x p      */
    double *mu0;                             /* p: the start's previous mean */
    int m_v0;                                /* (m, v) = (offset + X mu, 0) now */
    int obs_v0;                              /* ... and dm, dv, L_v0 = sum f there */
    double L_v0;                             /* (log_post_v0, for irls_newton) */
    int rank;                                /* rank of X'WX, -1 until known */
    const double *warm;                      /* p x p starting precision, or NULL */
    double *rwork;                           /* p^2 + 4p for vb_gram_rank    */
} cavi_state;

static void set_tau(cavi_state *S) {
    S->M->Etau = S->A / S->B;
    S->M->Elogtau = digamma(S->A) - log(S->B);
}

/* sum_t f_t(m_t, v_t); derivatives into dm, dv unless they are NULL */
static double sum_obs(cavi_state *S, const double *m, const double *v, double *dm, double *dv) {
    return vb_glm_obs_sum(S->M, m, v, dm, dv);
}

/* Prior expectation and entropy of block b at (mu_b, Sigma_b); Sb is k x k. */
static double block_prior_entropy(cavi_state *S, int b, const double *mub, const double *Sb,
                                  double logdetLam) {
    int k = S->bstart[b + 1] - S->bstart[b];
    double G = 0, a, c;
    for (int i = 0; i < k; i++)
        G += vb_glm_prior(S->M, S->idx[S->bstart[b] + i], mub[i], Sb[i + i * k], &a, &c);
    return G - 0.5 * logdetLam;
}

/* v_t contribution of a block: || R^{-T} x_tb ||^2 with Lambda_b = R'R. */
static int block_var(int n, int k, const double *Xb, const double *R, double *Z, double *out) {
    if (k == 1) {
        double s2 = 1.0 / (R[0] * R[0]);
        for (int t = 0; t < n; t++)
            out[t] = Xb[t] * Xb[t] * s2;
        return VB_OK;
    }
    return vb_rowvar(n, k, Xb, n, R, Z, out);
}

static void gather_block(cavi_state *S, int b, double *dst, const double *full) {
    int k = S->bstart[b + 1] - S->bstart[b], p = S->M->p;
    const int *ix = S->idx + S->bstart[b];
    for (int j = 0; j < k; j++)
        for (int i = 0; i < k; i++)
            dst[i + j * k] = full[ix[i] + (size_t)ix[j] * p];
}

/* Points S->Xk at the columns of block b (X itself when one block holds all). */
static void block_columns(cavi_state *S, int b) {
    vb_glm *M = S->M;
    int n = M->n, k = S->bstart[b + 1] - S->bstart[b];
    const int *ix = S->idx + S->bstart[b];
    if (S->nb == 1) {
        S->Xk = M->X;
        return;
    }
    int contiguous = 1; /* a single column, or adjacent ones: read X in place */
    for (int j = 1; j < k; j++)
        contiguous = contiguous && ix[j] == ix[0] + j;
    if (contiguous) {
        S->Xk = M->X + (size_t)ix[0] * n;
        return;
    }
    for (int j = 0; j < k; j++)
        memcpy(S->Xb + (size_t)j * n, M->X + (size_t)ix[j] * n, sizeof(double) * n);
    S->Xk = S->Xb;
}

/*
 * Target precision of block b at the current (m, v): X_b' diag(-2 dv) X_b +
 * diag(-2 dg/ds2) into Lb; gradient into g.  With `at_prior_var`, prior
 * curvature is taken at s2 = scale^2 (initialisation, before Sigma exists).
 */
static int block_target(cavi_state *S, int b, int at_prior_var) {
    vb_glm *M = S->M;
    int n = M->n, k = S->bstart[b + 1] - S->bstart[b], p = M->p, one = 1;
    const int *ix = S->idx + S->bstart[b];
    double done = 1.0, dzero = 0.0, a, c;
    block_columns(S, b);
    if (k == 1) { /* one pass: x' diag(-2 dv) x and x' dm */
        const double *x = S->Xk;
        double h = 0, g = 0;
        for (int t = 0; t < n; t++) {
            h -= 2.0 * S->dv[t] * x[t] * x[t];
            g += x[t] * S->dm[t];
        }
        S->Lb[0] = h;
        S->g[0] = g;
    } else {
        for (int t = 0; t < n; t++)
            S->work[t] = -2.0 * S->dv[t];
        if (vb_xtwx(n, k, S->Xk, n, S->work, S->Z, S->Lb) != VB_OK) return VB_INTERRUPTED;
        if (!(S->g_raw && S->nb == 1)) /* else pred_bound() has just formed it */
            F77_CALL(dgemv)("T", &n, &k, &done, S->Xk, &n, S->dm, &one, &dzero, S->g, &one FCONE);
        S->g_raw = 0;
    }
    if (S->nb == 1 && S->rank < 0) S->rank = vb_gram_rank(k, S->Lb, S->rwork);
    for (int i = 0; i < k; i++) {
        int j = ix[i];
        double s2 = at_prior_var ? M->pscale[j] * M->pscale[j] : S->Sig[j + (size_t)j * p];
        vb_glm_prior(M, j, S->mu[j], s2, &a, &c);
        S->g[i] += a;
        S->Lb[i + i * k] += -2.0 * c;
        if (S->Ps) S->Ps[i] = -2.0 * c;
    }
    if (S->Ds) {
        if (k > 1)
            memcpy(S->Ds, S->work, sizeof(double) * n);
        else
            S->dw_ok = 0; /* (the one-pass branch forms no weights) */
    }
    return VB_OK;
}

/* Writes an accepted block state (mub, Lambda_a in Lb, its factor Rb) into S. */
static int block_store(cavi_state *S, int b, const double *mub, const double *Lb, double *Rb) {
    int k = S->bstart[b + 1] - S->bstart[b], p = S->M->p;
    const int *ix = S->idx + S->bstart[b];
    int info = vb_chol_inv(k, Rb, k); /* Rb now holds Sigma_b */
    if (info != 0) return vb_lapack_status(info);
    for (int j = 0; j < k; j++) {
        S->mu[ix[j]] = mub[j];
        for (int i = 0; i < k; i++) {
            S->Lam[ix[i] + (size_t)ix[j] * p] = Lb[i + j * k];
            S->Sig[ix[i] + (size_t)ix[j] * p] = Rb[i + j * k];
        }
    }
    return VB_OK;
}

/* Block b's precision is in Lb: factor it and store it with the current mean. */
static int block_set(cavi_state *S, int b) {
    int k = S->bstart[b + 1] - S->bstart[b];
    memcpy(S->Rb, S->Lb, sizeof(double) * k * k);
    int info = vb_chol(k, S->Rb, k);
    if (info != 0) return vb_lapack_status(info);
    for (int i = 0; i < k; i++)
        S->mub[i] = S->mu[S->idx[S->bstart[b] + i]];
    return block_store(S, b, S->mub, S->Lb, S->Rb);
}

/*
 * 1/2 g' Sigma g + 1/4 ||(Lambda - Lambda*) Sigma||_F^2 for the current block:
 * D = Lambda - Lambda* into D (which may be Lstar itself), D Sigma by dsymm
 * into work; ||.||_F^2 of the symmetric similar matrix is tr((D Sigma)^2).
 */
static double block_predicted_gain(int k, const double *g, const double *Lcur, double *Lstar,
                                   const double *Scur, double *D, double *work) {
    double q = 0, r = 0, done = 1.0, dzero = 0.0;
    size_t kk = (size_t)k * k;
    for (int j = 0; j < k; j++) {
        double s = 0;
        for (int i = 0; i < k; i++)
            s += Scur[i + (size_t)j * k] * g[i];
        q += g[j] * s;
    }
    if (k == 0) return 0;
    for (size_t i = 0; i < kk; i++)
        D[i] = Lcur[i] - Lstar[i];
    F77_CALL(dsymm)("L", "U", &k, &k, &done, D, &k, Scur, &k, &dzero, work, &k FCONE FCONE);
    for (int j = 0; j < k; j++)
        for (int i = 0; i < k; i++)
            r += work[i + (size_t)j * k] * work[j + (size_t)i * k];
    return 0.5 * q + 0.25 * r;
}

/* --------------------------------------------------------- block step -- */

typedef struct {
    cavi_state *S;
    int b;
    double Fa; /* sum_t f_t at the trial point */
} block_trial;

/* The trial point of block b at step a, left in La, Rb, Sa, mua, mt, vt, dmt, dvt. */
static int block_try(double a, void *ctx, double *val) {
    block_trial *bt = (block_trial *)ctx;
    cavi_state *S = bt->S;
    int b = bt->b, n = S->M->n, k = S->bstart[b + 1] - S->bstart[b], kk = k * k, one = 1;
    double done = 1.0, dzero = 0.0;
    if (vb_interrupted()) return VB_INTERRUPTED; /* a trial costs n k^2: check each one */
    for (int i = 0; i < kk; i++)
        S->La[i] = (1 - a) * S->Lcur[i] + a * S->Lb[i];
    memcpy(S->Rb, S->La, sizeof(double) * kk);
    int info = vb_chol(k, S->Rb, k);
    if (info != 0) return vb_lapack_status(info);
    for (int i = 0; i < k; i++)
        S->delta[i] = a * S->g[i];
    vb_chol_solve(k, S->Rb, k, S->delta);
    for (int i = 0; i < k; i++)
        S->mua[i] = S->mub[i] + S->delta[i];
    memcpy(S->Sa, S->Rb, sizeof(double) * kk);
    info = vb_chol_inv(k, S->Sa, k);
    if (info != 0) return vb_lapack_status(info);
    if (k == 1) {
        /* one pass: m, v and the expectations at the trial point */
        const double *x = S->Xk;
        double d = S->delta[0], ds2 = S->Sa[0] - S->Scur[0], F = 0;
        for (int t = 0; t < n; t++) {
            double mt = S->m[t] + d * x[t], vt = S->v[t] + ds2 * x[t] * x[t];
            S->mt[t] = mt;
            S->vt[t] = vt = vt < 0 ? 0 : vt;
            F += vb_glm_obs(S->M, t, mt, vt, S->dmt + t, S->dvt + t);
        }
        bt->Fa = F;
    } else {
        F77_CALL(dgemv)("N", &n, &k, &done, S->Xk, &n, S->delta, &one, &dzero, S->mt, &one FCONE);
        if (block_var(n, k, S->Xk, S->Rb, S->Z, S->vt) != VB_OK) return VB_INTERRUPTED;
        for (int t = 0; t < n; t++) {
            S->mt[t] += S->m[t];
            S->vt[t] = S->v[t] - S->vold[t] + S->vt[t];
            if (S->vt[t] < 0) S->vt[t] = 0;
        }
        /* derivatives at the trial point come for free; kept if it is accepted */
        bt->Fa = sum_obs(S, S->mt, S->vt, S->dmt, S->dvt);
    }
    *val = bt->Fa + block_prior_entropy(S, b, S->mua, S->Sa, vb_chol_logdet(k, S->Rb, k));
    return VB_OK;
}

static void swap(double **a, double **b) {
    double *t = *a;
    *a = *b;
    *b = t;
}

/*
 * After an accepted step, keep going along the same mean direction while the
 * ELBO rises: mu_b += 2^j delta, j = 0, 1, ... (Sigma_b fixed, so only m moves).
 * Where the likelihood is nearly flat (separated data under a wide prior) the
 * curvature in Lambda* is tiny only *locally*, the natural-gradient step
 * under-travels and halving makes it worse; doubling reaches a far optimum in
 * log(distance) evaluations instead of thousands of sweeps.  A trial is made
 * only where a Newton step along the line would go at least as far as the
 * trial: slope >= curvature along delta (both O(n) from the derivatives at
 * hand, no expectation), so an ordinary fit, whose line optimum is near,
 * mostly pays two dot products (+5% instructions on a meanfield logistic fit).  Each accepted
 * extension increases the ELBO, so the trace stays monotone.  Uses mt (the pre-step m, left there
 * by the swap), vold and the dmt/dvt pair.
 */
#define VB_EXTEND_MAX 60
static int worth_extending(cavi_state *S, int b, const double *xd, double step) {
    vb_glm *M = S->M;
    int k = S->bstart[b + 1] - S->bstart[b];
    const int *ix = S->idx + S->bstart[b];
    double slope = 0, curv = 0, a, c;
    for (int t = 0; t < M->n; t++) {
        slope += xd[t] * S->dm[t];
        curv -= 2.0 * S->dv[t] * xd[t] * xd[t];
    }
    for (int i = 0; i < k; i++) {
        int j = ix[i];
        vb_glm_prior(M, j, S->mu[j], S->Sig[j + (size_t)j * M->p], &a, &c);
        slope += a * S->delta[i];
        curv -= 2.0 * c * S->delta[i] * S->delta[i];
    }
    return slope > 0 && slope >= curv * step;
}

static int mean_extend(cavi_state *S, int b, double *F, int *ext) {
    vb_glm *M = S->M;
    int n = M->n, k = S->bstart[b + 1] - S->bstart[b];
    const int *ix = S->idx + S->bstart[b];
    double *xd = S->vold, a, c;
    for (int t = 0; t < n; t++)
        xd[t] = S->m[t] - S->mt[t];
    double G = 0;
    for (int i = 0; i < k; i++)
        G += vb_glm_prior(M, ix[i], S->mu[ix[i]], S->Sig[ix[i] + (size_t)ix[i] * M->p], &a, &c);
    double cur = *F + G, step = 1;
    for (int e = 0; e < VB_EXTEND_MAX; e++, step *= 2) {
        if (!worth_extending(S, b, xd, step)) break;
        for (int t = 0; t < n; t++)
            S->mt[t] = S->m[t] + step * xd[t];
        double Ga = 0;
        for (int i = 0; i < k; i++)
            Ga += vb_glm_prior(M, ix[i], S->mu[ix[i]] + step * S->delta[i],
                               S->Sig[ix[i] + (size_t)ix[i] * M->p], &a, &c);
        double Fa = sum_obs(S, S->mt, S->v, S->dmt, S->dvt);
        if (!R_FINITE(Fa + Ga) || Fa + Ga <= cur + vb_step_slack(cur)) break;
        for (int i = 0; i < k; i++)
            S->mu[ix[i]] += step * S->delta[i];
        swap(&S->m, &S->mt);
        swap(&S->dm, &S->dmt);
        swap(&S->dv, &S->dvt);
        cur = Fa + Ga;
        *F = Fa;
        (*ext)++;
        /* xd is unchanged: the next trial doubles the step from the new point */
    }
    return VB_OK;
}

/*
 * The first half of a block step: the target precision Lambda* and gradient
 * at the current q (one X_b'WX_b), the current block in Lcur, Scur, mub, its
 * factor in Rb, the predicted gain added to S->pred, and in *old the ELBO
 * terms the step search compares against.  Nothing of q changes.
 */
static int block_prepare(cavi_state *S, int b, const double *F, double *old) {
    int k = S->bstart[b + 1] - S->bstart[b], kk = k * k;
    const int *ix = S->idx + S->bstart[b];
    if (!S->grad_ok) sum_obs(S, S->m, S->v, S->dm, S->dv);
    S->grad_ok = 1;
    if (block_target(S, b, 0) != VB_OK) return VB_INTERRUPTED;
    gather_block(S, b, S->Lcur, S->Lam);
    gather_block(S, b, S->Scur, S->Sig);
    for (int i = 0; i < k; i++)
        S->mub[i] = S->mu[ix[i]];
    S->pred += block_predicted_gain(k, S->g, S->Lcur, S->Lb, S->Scur, S->La, S->Sa);
    memcpy(S->Rb, S->Lcur, sizeof(double) * kk);
    int info = vb_chol(k, S->Rb, k);
    if (info != 0) return vb_lapack_status(info);
    *old = *F + block_prior_entropy(S, b, S->mub, S->Scur, vb_chol_logdet(k, S->Rb, k));
    return VB_OK;
}

/* The second half: the damped fixed-point Newton step; *F is kept current and
 * S->full set when the step was a full one (a = 1) that no mean extension
 * lengthened. */
static int block_move(cavi_state *S, int b, double *F, double old) {
    int n = S->M->n, k = S->bstart[b + 1] - S->bstart[b];
    if (S->nb == 1)
        memcpy(S->vold, S->v, sizeof(double) * n);
    else if (k > 1 && block_var(n, k, S->Xk, S->Rb, S->Z, S->vold) != VB_OK)
        return VB_INTERRUPTED; /* k = 1: the trial updates v by x^2 (s2_new - s2_old) */
    block_trial bt = {S, b, 0};
    double a = 0, val;
    int st = VB_STALLED;
    if (S->omega > 1) { /* an over-relaxed step first */
        st = block_try(S->omega, &bt, &val);
        if (st == VB_INTERRUPTED) return st;
        if (st == VB_OK && !(R_FINITE(val) && val >= old - vb_step_slack(old))) st = VB_STALLED;
        if (st == VB_OK) a = S->omega;
    }
    if (st != VB_OK) st = vb_step_search(block_try, &bt, old, &a, &val);
    if (st != VB_OK) return st;
    if (S->Ds && S->dw_ok) { /* Lam_a = (1 - a) Lam + a Lam*, term by term */
        for (int t = 0; t < n; t++)
            S->Dw[t] += a * (S->Ds[t] - S->Dw[t]);
        for (int j = 0; j < k; j++)
            S->Pw[j] += a * (S->Ps[j] - S->Pw[j]);
    }
    st = block_store(S, b, S->mua, S->La, S->Rb);
    if (st != VB_OK) return st;
    swap(&S->m, &S->mt);
    swap(&S->v, &S->vt);
    swap(&S->dm, &S->dmt);
    swap(&S->dv, &S->dvt);
    *F = bt.Fa;
    int ext = 0;
    st = mean_extend(S, b, F, &ext);
    S->full = S->full && a >= 1.0 && ext == 0;
    return st;
}

static int block_step(cavi_state *S, int b, double *F) {
    double old;
    int st = block_prepare(S, b, F, &old);
    return st != VB_OK ? st : block_move(S, b, F, old);
}

/* ---------------------------------------------------- joint mean step -- */

/*
 * Joint Newton step on all the means with Sigma held fixed, for factorised q
 * (meanfield, block).  Coordinate ascent alone converges slowly when the
 * posterior is strongly correlated across blocks; this step moves every mean
 * at once along H^{-1} g with H = X' diag(-2 df/dv) X + diag(-2 dg/ds2), the
 * negative Hessian of the ELBO in mu (Price's identity).  X'WX is accumulated
 * over row chunks (vb_xtwx), so the extra memory is O(p^2 + chunk p).
 * Cost n p^2 + p^3/3.
 */
typedef struct {
    cavi_state *S;
    double Fa;
} joint_trial;

static int joint_try(double al, void *ctx, double *val) {
    joint_trial *jt = (joint_trial *)ctx;
    cavi_state *S = jt->S;
    vb_glm *M = S->M;
    double Ga = 0, a, c;
    for (int t = 0; t < M->n; t++)
        S->mt[t] = S->m[t] + al * S->jw[t];
    for (int j = 0; j < M->p; j++)
        Ga += vb_glm_prior(M, j, S->mu[j] + al * S->jd[j], S->Sig[j + (size_t)j * M->p], &a, &c);
    jt->Fa = sum_obs(S, S->mt, S->v, S->dmt, S->dvt);
    *val = jt->Fa + Ga;
    return VB_OK;
}

static int joint_mean_step(cavi_state *S, double *F) {
    vb_glm *M = S->M;
    int n = M->n, p = M->p, one = 1;
    double done = 1.0, dzero = 0.0, a, c, *H = S->jH, *g = S->jg, *delta = S->jd, *work = S->jw;
    if (!S->grad_ok) sum_obs(S, S->m, S->v, S->dm, S->dv);
    S->grad_ok = 1;
    int fresh = !S->jH_fresh;
    if (fresh) {
        for (int t = 0; t < n; t++)
            S->work[t] = -2.0 * S->dv[t];
        if (vb_xtwx(n, p, M->X, n, S->work, work, H) != VB_OK) return VB_INTERRUPTED;
        if (S->rank < 0) S->rank = vb_gram_rank(p, H, S->rwork);
    }
    F77_CALL(dgemv)("T", &n, &p, &done, M->X, &n, S->dm, &one, &dzero, g, &one FCONE);
    double G = 0;
    for (int j = 0; j < p; j++) {
        G += vb_glm_prior(M, j, S->mu[j], S->Sig[j + (size_t)j * p], &a, &c);
        g[j] += a;
        if (fresh) H[j + (size_t)j * p] += -2.0 * c;
    }
    if (fresh) {
        int info = vb_chol(p, H, p);
        if (info != 0) return vb_lapack_status(info);
    }
    memcpy(delta, g, sizeof(double) * p);
    vb_chol_solve(p, H, p, delta);
    double dec = 0;
    for (int j = 0; j < p; j++)
        dec += g[j] * delta[j];
    S->pred += 0.5 * dec; /* the Newton decrement: gain the step predicts */
    F77_CALL(dgemv)("N", &n, &p, &done, M->X, &n, delta, &one, &dzero, work, &one FCONE);
    joint_trial jt = {S, 0};
    double al, val;
    int st = vb_step_search(joint_try, &jt, *F + G, &al, &val);
    /*
     * Near the optimum X'WX changes little from sweep to sweep: its factor is
     * kept while full steps are accepted (a quasi-Newton step, the ELBO still
     * checked by the search) and rebuilt after a shortened or failed one.
     */
    S->jH_fresh = st == VB_OK && al == 1.0;
    if (st != VB_OK) return st;
    for (int j = 0; j < p; j++)
        S->mu[j] += al * delta[j];
    swap(&S->m, &S->mt);
    swap(&S->dm, &S->dmt);
    swap(&S->dv, &S->dvt);
    *F = jt.Fa;
    return VB_OK;
}

/* ------------------------------------------------ meanfield, at once -- */

/*
 * Meanfield with joint mean steps: every coordinate's NCVMP step of one sweep
 * taken at once, Lambda*_jj = sum_t -2 dv_t x_tj^2 - 2 dg_j/ds2 and
 * mu_j += a g_j / Lambda_a,jj from the same derivatives, with one step search
 * on the whole ELBO.  A coordinate's step changes v_t only by x_tj^2 ds_j^2,
 * which moves the other coordinates' targets at second order, and the means'
 * coupling is the joint step's, so this sweep does what p coordinate steps
 * do for two passes over X and one expectation per observation and trial
 * instead of p.  The gain it predicts is the coordinate steps' (as
 * block_predicted_gain).  When it cannot take the full step, the sweep falls
 * back to coordinate steps (with their mean extension).
 * The trial context is joint_try's (the state, the trial's ELBO).
 */
static int diag_try(double a, void *ctx, double *val) {
    joint_trial *dt = (joint_trial *)ctx;
    cavi_state *S = dt->S;
    vb_glm *M = S->M;
    int n = M->n, p = M->p;
    double G = 0, c1, c2;
    if (vb_interrupted()) return VB_INTERRUPTED;
    memcpy(S->mt, S->m, sizeof(double) * n);
    memcpy(S->vt, S->v, sizeof(double) * n);
    for (int j = 0; j < p; j++) {
        size_t jj = j + (size_t)j * p;
        double la = (1 - a) * S->Lam[jj] + a * S->dL[j], d = a * S->dg[j] / la,
               ds = 1.0 / la - S->Sig[jj];
        const double *x = M->X + (size_t)j * n;
        S->dmu[j] = d;
        S->ds2[j] = 1.0 / la;
        for (int t = 0; t < n; t++) {
            S->mt[t] += d * x[t];
            S->vt[t] += ds * x[t] * x[t];
        }
        G += vb_glm_prior(M, j, S->mu[j] + d, 1.0 / la, &c1, &c2) - 0.5 * log(la);
    }
    for (int t = 0; t < n; t++)
        if (S->vt[t] < 0) S->vt[t] = 0;
    dt->Fa = sum_obs(S, S->mt, S->vt, S->dmt, S->dvt);
    *val = dt->Fa + G;
    return VB_OK;
}

static int diag_step(cavi_state *S, double *F, double *a_out) {
    vb_glm *M = S->M;
    int n = M->n, p = M->p;
    double old = *F, a, c;
    *a_out = 0;
    if (!S->grad_ok) sum_obs(S, S->m, S->v, S->dm, S->dv);
    S->grad_ok = 1;
    for (int j = 0; j < p; j++) {
        size_t jj = j + (size_t)j * p;
        const double *x = M->X + (size_t)j * n;
        double h = 0, g = 0, s2 = S->Sig[jj];
        for (int t = 0; t < n; t++) {
            h -= 2.0 * S->dv[t] * x[t] * x[t];
            g += x[t] * S->dm[t];
        }
        old += vb_glm_prior(M, j, S->mu[j], s2, &a, &c) - 0.5 * log(S->Lam[jj]);
        S->dg[j] = g + a;
        S->dL[j] = h - 2.0 * c;
        double e = (S->Lam[jj] - S->dL[j]) * s2;
        S->pred += 0.5 * S->dg[j] * S->dg[j] * s2 + 0.25 * e * e;
    }
    joint_trial dt = {S, 0};
    double val;
    int st = vb_step_search(diag_try, &dt, old, &a, &val);
    if (st != VB_OK) return st;
    for (int j = 0; j < p; j++) {
        size_t jj = j + (size_t)j * p;
        S->mu[j] += S->dmu[j];
        S->Sig[jj] = S->ds2[j];
        S->Lam[jj] = 1.0 / S->ds2[j];
    }
    swap(&S->m, &S->mt);
    swap(&S->v, &S->vt);
    swap(&S->dm, &S->dmt);
    swap(&S->dv, &S->dvt);
    *F = dt.Fa;
    *a_out = a;
    return VB_OK;
}

/* ------------------------------------------------------------- sweeps -- */

/*
 * Full ELBO and its parts at the current state.  With `F_current` the sum
 * over observations in *F is taken as it stands (the block steps keep it
 * current, so a sweep does not pay n more expectations); gaussian sweeps
 * recompute it after the q(tau) step.
 */
static int full_elbo(cavi_state *S, double *F, double *loglik, double *kl, double *elbo,
                     int F_current) {
    vb_glm *M = S->M;
    int p = M->p;
    double G = 0, ldet = 0, a, c;
    if (!F_current) *F = sum_obs(S, S->m, S->v, NULL, NULL);
    *loglik = *F + M->llconst;
    for (int j = 0; j < p; j++)
        G += vb_glm_prior(M, j, S->mu[j], S->Sig[j + (size_t)j * p], &a, &c);
    for (int b = 0; b < S->nb; b++) {
        int k = S->bstart[b + 1] - S->bstart[b];
        gather_block(S, b, S->Rb, S->Lam);
        int info = vb_chol(k, S->Rb, k);
        if (info != 0) return vb_lapack_status(info);
        ldet += vb_chol_logdet(k, S->Rb, k);
    }
    double negkl = G - 0.5 * ldet + 0.5 * p * (1 + VB_LOG2PI);
    if (M->family == VB_GAUSSIAN) negkl += vb_glm_tau_terms(M, S->A, S->B);
    *kl = -negkl;
    *elbo = *loglik + negkl;
    return R_FINITE(*elbo) ? VB_OK : VB_NONFINITE;
}

static void gaussian_tau_update(cavi_state *S) {
    vb_glm *M = S->M;
    double ss = 0, neff = 0;
    for (int t = 0; t < M->n; t++) {
        if (M->wt[t] == 0) continue;
        double r = M->y[t] - S->m[t];
        ss += M->wt[t] * (r * r + S->v[t]);
        neff += 1;
    }
    S->A = M->a0 + 0.5 * neff;
    S->B = M->b0 + 0.5 * ss;
    set_tau(S);
    S->grad_ok = 0;
}

/* (m, v) = (offset + X mu, 0), unless they are already (S->m_v0). */
static void linpred_v0(cavi_state *S) {
    vb_glm *M = S->M;
    int n = M->n, p = M->p, one = 1;
    double done = 1.0;
    if (S->m_v0) return;
    S->obs_v0 = 0;
    for (int t = 0; t < n; t++) {
        S->m[t] = M->off[t];
        S->v[t] = 0;
    }
    if (p > 0) F77_CALL(dgemv)("N", &n, &p, &done, M->X, &n, S->mu, &one, &done, S->m, &one FCONE);
    S->m_v0 = 1;
}

/*
 * An IRLS-like Newton step (one pass over X): at the linear predictor of the
 * initial mean, m = X mu_init + offset, with v = 0, W = -2 df/dv and the
 * working response z = m - offset + (df/dm) / W, the mean solves
 * (X'WX + P) mu = X'W z + P mu_init + dg/dmu, i.e. one Newton step on the
 * log posterior from mu_init (P = -2 dg/ds2 at the prior variance), as one
 * iteration of glm()'s weighted least squares; every block's precision is its
 * sub-block of X'WX + P.  It depends on the data only through sums over rows,
 * so grouped and ungrouped binomial data start alike.  H (p x p) receives the
 * factor of X'WX + P; *L the log posterior at v = 0 (sum_t f_t(m_t, 0) +
 * sum_j g_j(mu_j, scale_j^2)) at the mean the step starts from.
 */
static int irls_newton(cavi_state *S, double *H, double *L) {
    vb_glm *M = S->M;
    int n = M->n, p = M->p, one = 1;
    double done = 1.0, dzero = 0.0, a, c, *g = S->jg ? S->jg : S->g, *rhs = S->vt;
    linpred_v0(S);
    *L = S->obs_v0 ? S->L_v0 : sum_obs(S, S->m, S->v, S->dm, S->dv); /* log_post_v0's */
    S->obs_v0 = 0;
    for (int t = 0; t < n; t++) {
        S->work[t] = -2.0 * S->dv[t];
        rhs[t] = S->dm[t] + S->work[t] * (S->m[t] - M->off[t]);
    }
    if (vb_xtwx(n, p, M->X, n, S->work, S->jw, H) != VB_OK) return VB_INTERRUPTED;
    S->rank = vb_gram_rank(p, H, S->rwork);
    F77_CALL(dgemv)("T", &n, &p, &done, M->X, &n, rhs, &one, &dzero, g, &one FCONE);
    for (int j = 0; j < p; j++) {
        *L += vb_glm_prior(M, j, S->mu[j], M->pscale[j] * M->pscale[j], &a, &c);
        H[j + (size_t)j * p] += -2.0 * c;
        g[j] += -2.0 * c * S->mu[j] + a;
        if (S->Pw) S->Pw[j] = -2.0 * c;
    }
    if (S->Dw) {
        memcpy(S->Dw, S->work, sizeof(double) * n);
        S->dw_ok = 1;
    }
    for (int b = 0; b < S->nb; b++) { /* block precisions: sub-blocks of X'WX + P */
        gather_block(S, b, S->Lb, H);
        int st = block_set(S, b);
        if (st != VB_OK) return st;
    }
    int info = vb_chol(p, H, p);
    if (info != 0) return vb_lapack_status(info);
    vb_chol_solve(p, H, p, g);
    memcpy(S->mu, g, sizeof(double) * p);
    S->m_v0 = 0;
    return VB_OK;
}

/*
 * The start of a fullrank fit: two of these Newton steps (the second from the
 * first's mean, the precision then the curvature there), the second kept only
 * if it raises the log posterior at v = 0.  The extra X'WX (n p^2) usually
 * saves a whole sweep (X'WX + a pass of variances + the expectations): after
 * one step the mean is still in Newton's quadratic phase, which the sweeps
 * would otherwise finish.  The first of the two needs no precision, so with
 * p >= 32 it is solved by conjugate gradients (irls_newton_cg: a few O(np)
 * iterations instead of X'WX; five at p = 200 on a well-conditioned design),
 * and exactly where they do not converge.  Factorised q (joint mean steps)
 * takes one exact step: a meanfield sweep costs O(np), an extra X'WX more than
 * it saves.
 */
/* The log posterior at v = 0 at the current mean (m, v set there, and the
 * derivatives, which a Newton step from here reuses). */
static double log_post_v0(cavi_state *S) {
    vb_glm *M = S->M;
    double a, c;
    S->m_v0 = 0; /* mu may have moved */
    linpred_v0(S);
    double L = S->L_v0 = sum_obs(S, S->m, S->v, S->dm, S->dv);
    S->obs_v0 = 1;
    for (int j = 0; j < M->p; j++)
        L += vb_glm_prior(M, j, S->mu[j], M->pscale[j] * M->pscale[j], &a, &c);
    return L;
}

/*
 * The first Newton step of a one-block start, solved inexactly by conjugate
 * gradients preconditioned with diag(X'WX + P): each iteration costs two
 * passes X p, X' u (4 n p flops) against n p^2 for X'WX, so at most p / 8
 * iterations are tried (half an X'WX).  Returns VB_OK with mu moved when the
 * residual fell below 1e-4 of the gradient, else VB_MAXIT with mu kept (the
 * caller then takes the exact step).  *L: the log posterior at v = 0 at the
 * starting mean.  H, Lambda and the weights of pred_bound() are not touched:
 * the exact second step sets them.
 */
static int irls_newton_cg(cavi_state *S, double *L) {
    vb_glm *M = S->M;
    int n = M->n, p = M->p, one = 1, kmax = p / 8;
    double done = 1.0, dzero = 0.0, a, c;
    if (kmax < 4) return VB_MAXIT;
    double *x = S->rwork, *r = x + p, *z = r + p, *d = z + p, *q = d + p, *P = q + p, *dir = S->jg,
           *u = S->vt, *W = S->work;
    linpred_v0(S);
    *L = S->obs_v0 ? S->L_v0 : sum_obs(S, S->m, S->v, S->dm, S->dv);
    S->obs_v0 = 0;
    for (int t = 0; t < n; t++)
        W[t] = -2.0 * S->dv[t];
    F77_CALL(dgemv)("T", &n, &p, &done, M->X, &n, S->dm, &one, &dzero, r, &one FCONE);
    double gg = 0;
    for (int j = 0; j < p; j++) {
        *L += vb_glm_prior(M, j, S->mu[j], M->pscale[j] * M->pscale[j], &a, &c);
        P[j] = -2.0 * c;
        r[j] += a;
        x[j] = 0;
        const double *xj = M->X + (size_t)j * n;
        double s = P[j];
        for (int t = 0; t < n; t++)
            s += W[t] * xj[t] * xj[t];
        d[j] = s > 0 ? s : 1;
        gg += r[j] * r[j];
    }
    double rz = 0;
    for (int j = 0; j < p; j++) {
        z[j] = r[j] / d[j];
        dir[j] = z[j];
        rz += r[j] * z[j];
    }
    for (int k = 0; k < kmax; k++) {
        F77_CALL(dgemv)("N", &n, &p, &done, M->X, &n, dir, &one, &dzero, u, &one FCONE);
        for (int t = 0; t < n; t++)
            u[t] *= W[t];
        F77_CALL(dgemv)("T", &n, &p, &done, M->X, &n, u, &one, &dzero, q, &one FCONE);
        double pq = 0, rr = 0, rz1 = 0;
        for (int j = 0; j < p; j++) {
            q[j] += P[j] * dir[j];
            pq += dir[j] * q[j];
        }
        if (!(pq > 0)) return VB_MAXIT;
        double al = rz / pq;
        for (int j = 0; j < p; j++) {
            x[j] += al * dir[j];
            r[j] -= al * q[j];
            rr += r[j] * r[j];
        }
        if (rr <= 1e-8 * gg) {
            for (int j = 0; j < p; j++)
                S->mu[j] += x[j];
            S->m_v0 = 0;
            return VB_OK;
        }
        for (int j = 0; j < p; j++) {
            z[j] = r[j] / d[j];
            rz1 += r[j] * z[j];
        }
        double be = rz1 / rz;
        rz = rz1;
        for (int j = 0; j < p; j++)
            dir[j] = z[j] + be * dir[j];
    }
    return VB_MAXIT;
}

static int irls_start(cavi_state *S, double *H) {
    vb_glm *M = S->M;
    int p = M->p;
    double L0, L1, L2, *mu0 = S->mu0, *mu1 = S->jd;
    /* Far from the mode (large effects, a poor mu_init) a full Newton step can
     * overshoot by orders of magnitude: then it is halved until the log
     * posterior rises, and Newton steps are repeated from there (glm()'s IRLS
     * with step halving), at most 30 of them.  Near the mode the first full
     * step is kept, at no extra cost but one O(np) evaluation. */
    memcpy(mu0, S->mu, sizeof(double) * p);
    int st = S->nb == 1 ? irls_newton_cg(S, &L0) : VB_MAXIT; /* else, or if CG fails: exact */
    if (st != VB_OK) st = irls_newton(S, H, &L0);
    for (int k = 0; st == VB_OK && p > 0; k++) {
        L1 = log_post_v0(S);
        if (R_FINITE(L1) && L1 >= L0) break;
        memcpy(mu1, S->mu, sizeof(double) * p);
        double t = 1;
        do {
            t *= 0.5;
            for (int j = 0; j < p; j++)
                S->mu[j] = mu0[j] + t * (mu1[j] - mu0[j]);
            L1 = log_post_v0(S);
        } while (!(R_FINITE(L1) && L1 >= L0) && t > 1e-10);
        if (!(R_FINITE(L1) && L1 >= L0)) {
            memcpy(S->mu, mu0, sizeof(double) * p);
            S->m_v0 = 0;
            break;
        }
        if (k == 30 || vb_interrupted()) break;
        memcpy(mu0, S->mu, sizeof(double) * p);
        st = irls_newton(S, H, &L0);
    }
    if (st != VB_OK || S->nb != 1 || p == 0) return st;
    memcpy(mu1, S->mu, sizeof(double) * p);
    st = irls_newton(S, H, &L1); /* L1: at mu1 */
    if (st != VB_OK) return st;
    L2 = log_post_v0(S);
    if (!(R_FINITE(L2) && L2 >= L1)) {
        memcpy(S->mu, mu1, sizeof(double) * p);
        S->m_v0 = 0;
    }
    return VB_OK;
}

/*
 * Starting q.  A warm start (a previous fit's precision, its block entries
 * used) keeps mu and sets each Sigma_b from it.  Otherwise, with one block or
 * joint mean steps on: irls_start; else Sigma_b = inverse curvature at mu_init
 * with v = 0, per block (mu kept).
 */
static int cavi_start(cavi_state *S) {
    vb_glm *M = S->M;
    int n = M->n;
    if (S->warm) {
        for (int b = 0; b < S->nb; b++) {
            int k = S->bstart[b + 1] - S->bstart[b];
            gather_block(S, b, S->Lb, S->warm);
            for (int j = 0; j < k; j++) /* its symmetric part */
                for (int i = 0; i < j; i++)
                    S->Lb[i + j * k] = S->Lb[j + i * k] =
                        0.5 * (S->Lb[i + j * k] + S->Lb[j + i * k]);
            int st = block_set(S, b);
            if (st != VB_OK) return st;
        }
        S->jH_fresh = 0;
    } else if (S->nb == 1 || S->joint) {
        int st = irls_start(S, S->jH);
        if (st != VB_OK) return st;
        S->jH_fresh = 0; /* at v = 0: the first joint step refactors */
    } else {
        linpred_v0(S);
        sum_obs(S, S->m, S->v, S->dm, S->dv);
        for (int b = 0; b < S->nb; b++) {
            if (block_target(S, b, 1) != VB_OK) return VB_INTERRUPTED;
            int st = block_set(S, b);
            if (st != VB_OK) return st;
        }
    }
    linpred_v0(S);
    S->m_v0 = S->obs_v0 = 0;
    for (int b = 0; b < S->nb; b++) {
        int k = S->bstart[b + 1] - S->bstart[b];
        block_columns(S, b);
        gather_block(S, b, S->Rb, S->Lam);
        int info = vb_chol(k, S->Rb, k);
        if (info != 0) return vb_lapack_status(info);
        if (block_var(n, k, S->Xk, S->Rb, S->Z, S->vt) != VB_OK) return VB_INTERRUPTED;
        for (int t = 0; t < n; t++)
            S->v[t] += S->vt[t];
    }
    S->grad_ok = 0;
    if (M->family == VB_GAUSSIAN) gaussian_tau_update(S);
    return VB_OK;
}

/*
 * An upper bound on the gain a full step on the one block (fullrank) would
 * make from the current q, without the X'WX that computes it
 * (block_predicted_gain): while Lambda = X' diag(D) X + diag(P) is known term
 * by term (the start and every step keep D and P), Lambda - Lambda* =
 * X' diag(d) X + diag(e) with d = D - D*, e = P - P*, and
 *   || X' diag(d) X Sigma ||_F^2 = d' (H o H) d,   H = X Sigma X',
 * where H o H = D^-1 (K o K) D^-1 with K = D^1/2 H D^1/2 <= I (Lambda >=
 * X'DX as P >= 0), so by Schur's bound lambda_max(K o K) <= max_t K_tt:
 *   d' (H o H) d <= max_t (D_t v_t) sum_t (d_t / D_t)^2.
 * With || diag(e) Sigma ||_F exact, the triangle inequality bounds the
 * precision part of the predicted gain; the mean part 1/2 g' Sigma g is exact.
 * Cost: one X' dm (n p; left in g for block_target() should the bound not
 * certify), O(n + p^2).  Returns +Inf when it does not apply.
 */
static double pred_bound(cavi_state *S) {
    vb_glm *M = S->M;
    int n = M->n, p = M->p, one = 1;
    double done = 1.0, dzero = 0.0, a, c, r = 0, e2 = 0, q = 0, *g = S->jg;
    if (!S->dw_ok || !S->grad_ok) return R_PosInf;
    for (int t = 0; t < n; t++) {
        double D = S->Dw[t], d = D + 2.0 * S->dv[t];
        if (D > 0)
            r += d * d * S->v[t] / D;
        else if (d != 0 || D < 0)
            return R_PosInf;
    }
    F77_CALL(dgemv)("T", &n, &p, &done, M->X, &n, S->dm, &one, &dzero, S->g, &one FCONE);
    S->g_raw = 1; /* for block_target(), should the bound not certify */
    for (int j = 0; j < p; j++) {
        vb_glm_prior(M, j, S->mu[j], S->Sig[j + (size_t)j * p], &a, &c);
        g[j] = S->g[j] + a;
        double e = S->Pw[j] + 2.0 * c, s = 0;
        if (S->Pw[j] < 0) return R_PosInf;
        for (int i = 0; i < p; i++)
            s += S->Sig[i + (size_t)j * p] * S->Sig[i + (size_t)j * p];
        e2 += e * e * s;
    }
    for (int j = 0; j < p; j++) {
        double s = 0;
        for (int i = 0; i < p; i++)
            s += S->Sig[i + (size_t)j * p] * g[i];
        q += g[j] * s;
    }
    double f = sqrt(r) + sqrt(e2);
    return 0.5 * q + 0.25 * f * f;
}

/*
 * The step of a one-block (fullrank) q.  After a clean sweep (full steps whose
 * gain the quadratic model predicted within a factor 2) the fit has converged
 * at the current q, without another step, when the gain a full step predicts
 * is within thr: first by pred_bound() (no X'WX), else exactly (from the X'WX
 * the step needs anyway); then mean_polish().  Otherwise the step is over-relaxed by 1 / (1 - r),
 * where r^2 = (predicted gain) / (last gain) estimates the linear rate of the
 * sweeps (when r < 1/2; the plain step if the ELBO does not rise).
 */
/*
 * At a certified q, one Newton step on the mean alone, mu += Sigma g (g the
 * gradient just computed): Sigma and so v stay, so it costs one X delta and n
 * expectations, no X'WX and no pass of variances.  The mean part of the
 * remaining gain (most of it) goes, and the error of mu drops from about
 * sqrt(2 tol |ELBO|) sd to its square.  Kept only if the ELBO rises; returns
 * whether it was.
 */
static int mean_polish(cavi_state *S, double *F, const double *g) {
    vb_glm *M = S->M;
    int n = M->n, p = M->p, one = 1;
    double done = 1.0, a, c, G0 = 0, G1 = 0, *d = S->delta;
    for (int j = 0; j < p; j++) {
        double s = 0;
        for (int i = 0; i < p; i++)
            s += S->Sig[j + (size_t)i * p] * g[i];
        d[j] = s;
    }
    memcpy(S->mt, S->m, sizeof(double) * n);
    F77_CALL(dgemv)("N", &n, &p, &done, M->X, &n, d, &one, &done, S->mt, &one FCONE);
    for (int j = 0; j < p; j++) {
        double s2 = S->Sig[j + (size_t)j * p];
        G0 += vb_glm_prior(M, j, S->mu[j], s2, &a, &c);
        G1 += vb_glm_prior(M, j, S->mu[j] + d[j], s2, &a, &c);
    }
    double Fa = sum_obs(S, S->mt, S->v, S->dmt, S->dvt);
    if (!(R_FINITE(Fa + G1) && Fa + G1 > *F + G0)) return 0;
    for (int j = 0; j < p; j++)
        S->mu[j] += d[j];
    swap(&S->m, &S->mt);
    swap(&S->dm, &S->dmt);
    swap(&S->dv, &S->dvt);
    *F = Fa;
    return 1;
}

static int fullrank_step(cavi_state *S, double *F, double thr, int clean, double prev_gain,
                         int *conv) {
    double old;
    if (clean && pred_bound(S) <= thr) {
        *conv = 1 + mean_polish(S, F, S->jg);
        return VB_OK;
    }
    int st = block_prepare(S, 0, F, &old);
    S->g_raw = 0;
    if (st != VB_OK) return st;
    if (clean && S->pred <= thr) {
        *conv = 1 + mean_polish(S, F, S->g);
        return VB_OK;
    }
    double r = clean && prev_gain > 0 ? sqrt(S->pred / prev_gain) : 1;
    S->omega = r < 0.5 ? 1 / (1 - r) : 1;
    return block_move(S, 0, F, old);
}

/* The CAVI worker: sweeps until converged or a status says why not. */
static int cavi_run(cavi_state *S, const vb_settings *set, vb_trace *tr, int *iter, double *elbo,
                    double *ll, double *kl) {
    double F;
    int it = 0, clean = 0, st = cavi_start(S);
    double prev_gain = 0;
    *iter = 0;
    if (st == VB_OK) { /* with the derivatives, which the first step needs */
        F = sum_obs(S, S->m, S->v, S->dm, S->dv);
        S->grad_ok = 1;
        st = full_elbo(S, &F, ll, kl, elbo, 1);
    }
    if (st != VB_OK) return st;
    vb_trace_push(tr, *elbo);
    vb_progress pr;
    vb_progress_init(&pr, set->quiet);
    while (it < set->maxit) {
        it++;
        *iter = it;
        S->pred = 0;
        int sweep = VB_OK, accepted = 0;
        if (S->joint) {
            int sj = joint_mean_step(S, &F);
            if (sj == VB_INTERRUPTED) return sj;
            if (sj != VB_OK) sweep = sj;
        }
        if (S->diag) {
            double a;
            int sd = diag_step(S, &F, &a);
            if (sd == VB_INTERRUPTED) return sd;
            if (sd == VB_OK) accepted++;
            if (sd == VB_OK && a == 1.0) goto swept;
            S->diag = 0; /* from now on coordinate steps */
        }
        S->full = 1;
        for (int b = 0; b < S->nb; b++) {
            int sb;
            if (S->nb == 1) {
                int conv = 0;
                sb = fullrank_step(S, &F, set->tol * (fabs(*elbo) + set->tol), clean, prev_gain,
                                   &conv);
                if (sb == VB_OK && conv == 1) {
                    *iter = it - 1; /* converged at the q of the last sweep */
                    return VB_OK;
                }
                if (sb == VB_OK && conv == 2) { /* and its mean polished */
                    double prev = *elbo;
                    st = full_elbo(S, &F, ll, kl, elbo, 1);
                    if (st != VB_OK) return st;
                    vb_trace_push(tr, *elbo);
                    vb_progress_tick(&pr, "vb", it, *elbo);
                    return *elbo < prev - vb_step_slack(prev) ? VB_DECREASED : VB_OK;
                }
            } else
                sb = block_step(S, b, &F);
            if (sb == VB_INTERRUPTED) return sb;
            if (sb == VB_OK)
                accepted++;
            else
                sweep = sb;
            if (vb_interrupted()) return VB_INTERRUPTED;
        }
    swept:
        if (S->M->family == VB_GAUSSIAN) gaussian_tau_update(S);
        double prev = *elbo;
        st = full_elbo(S, &F, ll, kl, elbo, S->M->family != VB_GAUSSIAN);
        if (st != VB_OK) return st;
        vb_trace_push(tr, *elbo);
        vb_progress_tick(&pr, "vb", it, *elbo);
        if (*elbo < prev - vb_step_slack(prev)) return VB_DECREASED;
        if (accepted == 0) return sweep; /* nothing moved: a stall, not convergence */
        double thr = set->tol * (fabs(*elbo) + set->tol), gain = *elbo - prev;
        if (sweep == VB_OK && vb_tol_met(prev, *elbo, set->tol) && S->pred <= thr) return VB_OK;
        clean = sweep == VB_OK && S->full && gain <= 2 * S->pred && gain >= 0.5 * S->pred &&
                S->M->family != VB_GAUSSIAN; /* (q(tau)'s gain is not in pred) */
        prev_gain = gain;
        if (vb_interrupted()) return VB_INTERRUPTED;
    }
    return VB_MAXIT;
}

/* ------------------------------------------- gaussian, fullrank, normal -- */

/*
 * The gaussian family with a dense q(beta) and normal priors, by sufficient
 * statistics: G = X' diag(w) X is formed once (one dsyrk pass), after which
 * the q(beta) step (exact: Lambda = E tau G + P, mu = Lambda^{-1} (E tau h + P m0),
 * h = X' diag(w) (y - offset)) costs O(p^3) and the q(tau) step needs
 * sum_t w_t ((y_t - m_t)^2 + v_t) = rss(mu) + tr(G Sigma).  rss is never formed
 * as y'Wy - 2 mu'h + mu'G mu (which cancels catastrophically when the fit is
 * good or y has a large mean).  Instead it is computed exactly (one dgemv,
 * O(np)) at a reference point mu0, with g0 = X'W r0 from the exact residuals
 * r0 (another dgemv), and elsewhere from
 *   rss(mu) = rss(mu0) - 2 d' g0 + d' G d,  d = mu - mu0,
 * whose terms are at most a few times rss(mu0) while rss(mu) <= rss(mu0), so
 * the relative error of rss(mu) is about n eps rss(mu0) / rss(mu) (g0's
 * rounding included).  The reference is the start, which also gives
 * h = g0 + G mu0 (no separate pass), and is moved to the current mean by the
 * two passes once rss(mu) has fallen below 1/100 of rss(mu0): a fit with R^2
 * below 0.99 (against the intercept-only start) makes three passes over X
 * besides X'WX, a closer fit five.  One exact dgemv at the end gives the
 * fitted values and the final weighted residual sum.  The linear-predictor
 * variances are not formed (a dtrsm pass as costly as X'WX itself): R
 * computes them on demand.  The same ELBO as the general sweep, the same
 * starting point, updates and convergence test.
 *
 * Implicit centring (model$uncentred_by = c, model$uncentred_int): the
 * coefficients are those of X_c = X - 1 c' = X B, B = I - e_int c' (column
 * int of X is all ones), while the passes read the uncentred X: G_c = B' G B
 * in O(p^2), X_c mu = X (B mu), X_c' u = B' (X' u).  vb_fit() asks for it
 * only when every |c_j| is within 10 sd_j, so the cancellation in G_c and
 * X (B mu) costs at most about two digits; the centred copy of X (n p
 * writes) is not made.
 */
typedef struct {
    double *G, *h, *R, *g, *work; /* p x p, p, p x p, p, 2 p x p */
    double *Z;                    /* min(n, VB_CHUNK) x p, for X'WX */
    double neff;                  /* observations with positive weight */
    int diag;                     /* meanfield: Lambda = diag(E tau G_jj + 1/b_j^2) */
    double *mu0, *g0, rss0;       /* reference point: mean, h - G mu0, exact rss there */
    double trGS;                  /* tr(G Sigma) of the last q(tau) step */
    const double *cen;            /* implicit centring: c (p), or NULL */
    int cint;                     /* ... and the intercept's column */
    double *mraw;                 /* p: B mu */
} gauss_stats;

/* The coefficients of the uncentred X for mu (B mu), or mu itself. */
static const double *gauss_raw_mean(gauss_stats *T, const double *mu, int p) {
    if (!T->cen) return mu;
    double s = 0;
    for (int j = 0; j < p; j++) {
        T->mraw[j] = mu[j];
        s += T->cen[j] * mu[j];
    }
    T->mraw[T->cint] -= s;
    return T->mraw;
}

/* m = offset + X mu (one dgemv); returns sum_t w_t (y_t - m_t)^2, exactly. */
static double gauss_rss_exact(cavi_state *S, gauss_stats *T) {
    vb_glm *M = S->M;
    int n = M->n, p = M->p, one = 1;
    double done = 1.0, s0 = 0, s1 = 0;
    memcpy(S->m, M->off, sizeof(double) * n);
    if (p > 0)
        F77_CALL(dgemv)
    ("N", &n, &p, &done, M->X, &n, gauss_raw_mean(T, S->mu, p), &one, &done, S->m, &one FCONE);
    int t = 0;
    for (; t + 2 <= n; t += 2) {
        double r0 = M->y[t] - S->m[t], r1 = M->y[t + 1] - S->m[t + 1];
        s0 += M->wt[t] * r0 * r0;
        s1 += M->wt[t + 1] * r1 * r1;
    }
    for (; t < n; t++) {
        double r = M->y[t] - S->m[t];
        s0 += M->wt[t] * r * r;
    }
    return s0 + s1;
}

/*
 * The exact rss at the current mean, which becomes the reference point, and
 * g0 = X' W r0 from the exact residuals r0 (a second pass: h - G mu0 would
 * cancel when the residuals are small against y, as the rss would).
 */
static double gauss_set_reference(cavi_state *S, gauss_stats *T) {
    vb_glm *M = S->M;
    int n = M->n, p = M->p, one = 1;
    double done = 1.0, dzero = 0.0;
    T->rss0 = gauss_rss_exact(S, T);
    memcpy(T->mu0, S->mu, sizeof(double) * p);
    if (p > 0) {
        for (int t = 0; t < n; t++)
            S->work[t] = M->wt[t] * (M->y[t] - S->m[t]);
        F77_CALL(dgemv)("T", &n, &p, &done, M->X, &n, S->work, &one, &dzero, T->g0, &one FCONE);
        if (T->cen) { /* B' (X' W r0) */
            double gi = T->g0[T->cint];
            for (int j = 0; j < p; j++)
                T->g0[j] -= T->cen[j] * gi;
        }
    }
    return T->rss0;
}

/* rss at the current mean from the reference point and G (O(p^2), no pass over X). */
static double gauss_rss_stats(cavi_state *S, gauss_stats *T) {
    int p = S->M->p;
    double *d = T->work, lin = 0, quad = 0;
    for (int j = 0; j < p; j++)
        d[j] = S->mu[j] - T->mu0[j];
    for (int j = 0; j < p; j++) {
        const double *Gj = T->G + (size_t)j * p;
        double s = 0;
        for (int i = 0; i < p; i++)
            s += Gj[i] * d[i];
        quad += d[j] * s;
        lin += d[j] * T->g0[j];
    }
    double r = T->rss0 - 2.0 * lin + quad;
    return r > 0 ? r : 0;
}

/*
 * q(tau) from the current q(beta) (Sig holds Sigma), then the ELBO, with the
 * rss from the sufficient statistics; where it has fallen below
 * GAUSS_REF_DROP of the reference's (its terms, of the reference's size,
 * would then cancel), by a pass over X instead, which makes the current mean
 * the reference point.
 */
#define GAUSS_REF_DROP 0.01
static int gauss_tau_elbo(cavi_state *S, gauss_stats *T, double *elbo, double *ll, double *kl) {
    vb_glm *M = S->M;
    int p = M->p;
    double tr = 0, G = 0, a, c;
    for (size_t i = 0; i < (size_t)p * p; i++)
        tr += T->G[i] * S->Sig[i];
    T->trGS = tr;
    double rss = gauss_rss_stats(S, T);
    if (rss < GAUSS_REF_DROP * T->rss0) rss = gauss_set_reference(S, T);
    double ss = rss + tr;
    S->A = M->a0 + 0.5 * T->neff;
    S->B = M->b0 + 0.5 * ss;
    set_tau(S);
    for (int j = 0; j < p; j++)
        G += vb_glm_prior(M, j, S->mu[j], S->Sig[j + (size_t)j * p], &a, &c);
    double F = 0.5 * (T->neff * M->Elogtau - M->Etau * ss);
    double negkl = G - 0.5 * vb_chol_logdet(p, T->R, p) + 0.5 * p * (1 + VB_LOG2PI) +
                   vb_glm_tau_terms(M, S->A, S->B);
    *ll = F + M->llconst;
    *kl = -negkl;
    *elbo = *ll + negkl;
    return R_FINITE(*elbo) ? VB_OK : VB_NONFINITE;
}

/*
 * q(beta) at the current E tau: Lambda into Lam, its factor into R, Sigma into
 * Sig.  Meanfield (T->diag): given E tau the ELBO separates into a quadratic in
 * mu with Hessian E tau G + P, whatever the variances, and a function of each
 * s_j^2 alone; its exact maximiser is mu = (E tau G + P)^{-1} (E tau h + P m0)
 * (the fullrank mean) and s_j^2 = 1 / (E tau G_jj + 1/b_j^2), so one step is
 * the whole coordinate sweep and nothing of size n is touched.
 */
static int gauss_beta(cavi_state *S, gauss_stats *T, int move_mean) {
    vb_glm *M = S->M;
    int p = M->p;
    size_t pp = (size_t)p * p;
    double Et = M->Etau, *H = T->diag ? T->work : S->Lam;
    for (size_t i = 0; i < pp; i++)
        H[i] = Et * T->G[i];
    for (int j = 0; j < p; j++) {
        double b2 = M->pscale[j] * M->pscale[j];
        H[j + (size_t)j * p] += 1.0 / b2;
        T->g[j] = Et * T->h[j] + M->ploc[j] / b2;
    }
    if (T->diag) { /* Lam, R and Sig diagonal; H factored in place for the mean */
        memset(S->Lam, 0, sizeof(double) * pp);
        memset(T->R, 0, sizeof(double) * pp);
        memset(S->Sig, 0, sizeof(double) * pp);
        for (int j = 0; j < p; j++) {
            double l = H[j + (size_t)j * p];
            S->Lam[j + (size_t)j * p] = l;
            T->R[j + (size_t)j * p] = sqrt(l);
            S->Sig[j + (size_t)j * p] = 1.0 / l;
        }
        if (move_mean) {
            int info = vb_chol(p, H, p);
            if (info != 0) return vb_lapack_status(info);
            vb_chol_solve(p, H, p, T->g);
            memcpy(S->mu, T->g, sizeof(double) * p);
        }
        return VB_OK;
    }
    memcpy(T->R, S->Lam, sizeof(double) * pp);
    int info = vb_chol(p, T->R, p);
    if (info != 0) return vb_lapack_status(info);
    if (move_mean) {
        vb_chol_solve(p, T->R, p, T->g);
        memcpy(S->mu, T->g, sizeof(double) * p);
    }
    memcpy(S->Sig, T->R, sizeof(double) * pp);
    info = vb_chol_inv(p, S->Sig, p);
    return info != 0 ? vb_lapack_status(info) : VB_OK;
}

/*
 * The gain a q(beta) step would make now (as block_predicted_gain).  Meanfield:
 * the mean part is the Newton decrement 1/2 g' H^{-1} g of the joint mean step
 * (H = E tau G + P), the variance part that of each coordinate.
 */
static double gauss_pred(cavi_state *S, gauss_stats *T) {
    vb_glm *M = S->M;
    int p = M->p;
    size_t pp = (size_t)p * p;
    double Et = M->Etau, *Lstar = T->work + pp, *g = T->g;
    for (int j = 0; j < p; j++) {
        double b2 = M->pscale[j] * M->pscale[j], s = 0;
        for (int i = 0; i < p; i++)
            s += T->G[j + (size_t)i * p] * S->mu[i];
        g[j] = Et * (T->h[j] - s) + (M->ploc[j] - S->mu[j]) / b2;
    }
    for (size_t i = 0; i < pp; i++)
        Lstar[i] = Et * T->G[i];
    for (int j = 0; j < p; j++)
        Lstar[j + (size_t)j * p] += 1.0 / (M->pscale[j] * M->pscale[j]);
    if (!T->diag) return block_predicted_gain(p, g, S->Lam, Lstar, S->Sig, Lstar, T->work);
    double r = 0, q = 0, *d = T->work;
    for (int j = 0; j < p; j++) {
        double e =
            (S->Lam[j + (size_t)j * p] - Lstar[j + (size_t)j * p]) * S->Sig[j + (size_t)j * p];
        r += e * e;
    }
    memcpy(d, g, sizeof(double) * p);
    if (vb_chol(p, Lstar, p) != 0) return R_PosInf; /* not converged; gauss_beta reports it */
    vb_chol_solve(p, Lstar, p, d);
    for (int j = 0; j < p; j++)
        q += g[j] * d[j];
    return 0.5 * q + 0.25 * r;
}

static int gauss_run(cavi_state *S, gauss_stats *T, const vb_settings *set, vb_trace *tr, int *iter,
                     double *elbo, double *ll, double *kl) {
    vb_glm *M = S->M;
    int n = M->n, p = M->p, st;
    *iter = 0;
    T->neff = 0;
    for (int t = 0; t < n; t++)
        T->neff += M->wt[t] > 0;
    if (vb_xtwx(n, p, M->X, n, M->wt, T->Z, T->G) != VB_OK) return VB_INTERRUPTED;
    if (T->cen) { /* G_c = B' G B: G_jk - c_j u_k - u_j c_k + c_j c_k G_ii, u = G e_int */
        int i = T->cint;
        double *u = T->work, gii = T->G[i + (size_t)i * p];
        for (int j = 0; j < p; j++)
            u[j] = T->G[j + (size_t)i * p];
        for (int k = 0; k < p; k++)
            for (int j = 0; j < p; j++)
                T->G[j + (size_t)k * p] += -T->cen[j] * u[k] - u[j] * T->cen[k] +
                                           T->cen[j] * T->cen[k] * gii;
    }
    S->rank = vb_gram_rank(p, T->G, S->rwork);
    /* the start is the first reference point: h = X'W (y - offset) = g0 + G mu0 */
    gauss_set_reference(S, T);
    for (int j = 0; j < p; j++) {
        double s = 0;
        for (int i = 0; i < p; i++)
            s += T->G[j + (size_t)i * p] * T->mu0[i];
        T->h[j] = T->g0[j] + s;
    }
    if ((st = gauss_beta(S, T, 0)) != VB_OK) return st; /* the general start: mu kept */
    if ((st = gauss_tau_elbo(S, T, elbo, ll, kl)) != VB_OK) return st;
    vb_trace_push(tr, *elbo);
    vb_progress pr;
    vb_progress_init(&pr, set->quiet);
    for (int it = 1; it <= set->maxit; it++) {
        *iter = it;
        double pred = gauss_pred(S, T), prev = *elbo;
        if ((st = gauss_beta(S, T, 1)) != VB_OK) return st;
        if ((st = gauss_tau_elbo(S, T, elbo, ll, kl)) != VB_OK) return st;
        vb_trace_push(tr, *elbo);
        vb_progress_tick(&pr, "vb", it, *elbo);
        if (*elbo < prev - vb_step_slack(prev)) return VB_DECREASED;
        if (vb_tol_met(prev, *elbo, set->tol) && pred <= set->tol * (fabs(*elbo) + set->tol))
            return VB_OK;
        if (vb_interrupted()) return VB_INTERRUPTED;
    }
    return VB_MAXIT;
}

/*
 * The end of a gaussian fit: the fitted linear predictor m = offset + X mu by
 * one exact pass, and the expected weighted residual sum of squares
 * E_q sum_t w_t (y_t - x_t' beta - offset_t)^2 = rss(mu) + tr(G Sigma)
 * (deviance() of the fit), returned in *ewrss.  No variances.
 */
static void gauss_finish(cavi_state *S, gauss_stats *T, double *ewrss) {
    int p = S->M->p;
    double tr = 0;
    for (size_t i = 0; i < (size_t)p * p; i++)
        tr += T->G[i] * S->Sig[i];
    *ewrss = gauss_rss_exact(S, T) + tr;
}

/* ------------------------------------------------------- entry point -- */

static double *alloc0(size_t n) {
    return (double *)R_alloc(n + 1, sizeof(double));
}

SEXP C_glm_cavi(SEXP model, SEXP init, SEXP blocks, SEXP control) {
    vb_glm M;
    vb_glm_unpack(model, &M);
    vb_settings set;
    vb_settings_read(control, &set);
    int n = M.n, p = M.p;
    size_t ninit = (size_t)p + 2, nwarm = ninit + (size_t)p * p;
    if (TYPEOF(init) != REALSXP || (Rf_xlength(init) != ninit && Rf_xlength(init) != nwarm))
        Rf_error("'init' must be a double vector of length p + 2 (coefficients, tau shape, tau "
                 "rate), or p + 2 + p^2 with a starting precision matrix");
    if (TYPEOF(blocks) != INTSXP || Rf_length(blocks) != p)
        Rf_error("'blocks' must be an integer vector with one block id per coefficient");
    for (size_t j = 0; j < (size_t)Rf_xlength(init); j++)
        if (!R_FINITE(REAL(init)[j])) Rf_error("'init' must be finite");
    if (!(REAL(init)[p] > 0 && REAL(init)[p + 1] > 0))
        Rf_error("initial q(tau) needs positive shape and rate");

    /* blocks: ids 0..nb-1, every id used */
    int nb = 0;
    for (int j = 0; j < p; j++) {
        int b = INTEGER(blocks)[j];
        if (b == NA_INTEGER || b < 0 || b >= p) Rf_error("block ids must lie in 0..p-1");
        if (b + 1 > nb) nb = b + 1;
    }
    cavi_state S;
    memset(&S, 0, sizeof S);
    S.M = &M;
    S.nb = nb;
    S.bstart = (int *)R_alloc(nb + 1, sizeof(int));
    S.idx = (int *)R_alloc(p > 0 ? p : 1, sizeof(int));
    int kmax = 0;
    S.bstart[0] = 0;
    for (int b = 0, pos = 0; b < nb; b++) {
        S.bstart[b] = pos;
        for (int j = 0; j < p; j++)
            if (INTEGER(blocks)[j] == b) S.idx[pos++] = j;
        if (pos == S.bstart[b]) Rf_error("block id %d is not used: ids must be 0..nb-1", b);
        if (pos - S.bstart[b] > kmax) kmax = pos - S.bstart[b];
        S.bstart[b + 1] = pos;
    }
    size_t pp = (size_t)p * p, nk = (size_t)n * kmax, kk = (size_t)kmax * kmax;
    S.mu = alloc0(p);
    S.Lam = alloc0(pp);
    S.Sig = alloc0(pp);
    memset(S.Lam, 0, sizeof(double) * pp);
    memset(S.Sig, 0, sizeof(double) * pp);
    /* the gaussian path (below) needs only m and work of the n-sized buffers */
    int gauss = M.family == VB_GAUSSIAN && (nb == 1 || nb == p);
    for (int j = 0; j < p; j++)
        gauss = gauss && M.ptype[j] == VB_PRIOR_NORMAL;
    size_t ng = gauss ? 0 : (size_t)n;
    /* implicit centring: only the gaussian path reads the uncentred X */
    SEXP cen = vb_elt(model, "uncentred_by");
    int cint = -1;
    if (!Rf_isNull(cen)) {
        if (!gauss) Rf_error("'uncentred_by' applies to gaussian fits with normal priors only");
        if (TYPEOF(cen) != REALSXP || Rf_xlength(cen) != p)
            Rf_error("'uncentred_by' must be a double vector with one value per column");
        cint = Rf_asInteger(vb_elt(model, "uncentred_int"));
        if (cint == NA_INTEGER || cint < 1 || cint > p)
            Rf_error("'uncentred_int' must be a column index");
        cint--;
        for (int j = 0; j < p; j++)
            if (!R_FINITE(REAL(cen)[j])) Rf_error("'uncentred_by' must be finite");
        if (REAL(cen)[cint] != 0) Rf_error("'uncentred_by' must be 0 at the intercept");
    }
    double **nbufs[] = {&S.m, &S.v, &S.vold, &S.mt, &S.vt, &S.dm, &S.dv, &S.dmt, &S.dvt, &S.work};
    for (int i = 0; i < 10; i++)
        *nbufs[i] = alloc0(i == 0 || i == 9 ? (size_t)n : ng);
    S.Xb = alloc0(nb > 1 && !gauss ? nk : 0);
    S.Z = alloc0(gauss ? 0 : (size_t)(n < VB_CHUNK ? n : VB_CHUNK) * kmax);
    double **kk_bufs[] = {&S.Lb, &S.Rb, &S.Lcur, &S.Scur, &S.La, &S.Sa};
    for (int i = 0; i < 6; i++)
        *kk_bufs[i] = alloc0(kk);
    double **k_bufs[] = {&S.g, &S.delta, &S.mub, &S.mua};
    for (int i = 0; i < 4; i++)
        *k_bufs[i] = alloc0(kmax);
    /* joint mean steps for factorised q with at most joint_means coefficients */
    S.joint = nb > 1 && p <= set.joint_max;
    if ((S.joint || nb == 1) && !gauss) { /* H of the IRLS start and the joint steps */
        S.jH = alloc0(pp);
        S.jg = alloc0(p);
        S.jd = alloc0(p);
        S.mu0 = alloc0(p);
        size_t nc = (size_t)(n < VB_CHUNK ? n : VB_CHUNK) * p;
        size_t nw = nc > (size_t)n ? nc : (size_t)n;
        S.jw = alloc0(nw);
    }
    S.diag = S.joint && nb == p;
    if (S.diag) {
        double **d_bufs[] = {&S.dL, &S.dg, &S.dmu, &S.ds2};
        for (int i = 0; i < 4; i++)
            *d_bufs[i] = alloc0(p);
    }
    if (p > 0) memcpy(S.mu, REAL(init), sizeof(double) * p);
    S.A = REAL(init)[p];
    S.B = REAL(init)[p + 1];
    set_tau(&S);

    S.rank = -1;
    S.warm = (size_t)Rf_xlength(init) == nwarm ? REAL(init) + ninit : NULL;
    S.rwork = alloc0(pp + 4 * (size_t)p);
    if (nb == 1 && !S.warm && !gauss) {
        S.Dw = alloc0(n);
        S.Ds = alloc0(n);
        S.Pw = alloc0(p);
        S.Ps = alloc0(p);
    }

    vb_trace tr;
    vb_trace_init(&tr);
    int it;
    double elbo = R_NaN, ll = R_NaN, kl = R_NaN;
    int status;
    double ewrss = NA_REAL;
    if (gauss) {
        gauss_stats T;
        T.G = alloc0(pp);
        T.h = alloc0(p);
        T.R = alloc0(pp);
        T.g = alloc0(p);
        T.work = alloc0(2 * pp);
        T.diag = nb > 1;
        T.Z = alloc0((size_t)(n < VB_CHUNK ? n : VB_CHUNK) * p);
        T.mu0 = alloc0(p);
        T.g0 = alloc0(p);
        T.cen = cint >= 0 ? REAL(cen) : NULL;
        T.cint = cint;
        T.mraw = alloc0(p);
        status = gauss_run(&S, &T, &set, &tr, &it, &elbo, &ll, &kl);
        if (status != VB_INTERRUPTED && !vb_unwind_pending())
            gauss_finish(&S, &T, &ewrss);
        else
            memset(S.m, 0, sizeof(double) * n);
    } else {
        status = cavi_run(&S, &set, &tr, &it, &elbo, &ll, &kl);
    }
    /* read S.v only now (the sweep swaps its buffers); a gaussian fit's
       variances are computed on demand in R */
    const double *vout = gauss ? NULL : S.v;
    double tau[2] = {S.A, S.B};
    SEXP out = vb_glm_result(&M, S.mu, S.Sig, elbo, &tr, it, ll, kl, status,
                             M.family == VB_GAUSSIAN ? tau : NULL, S.m, vout);
    vb_glm_result_rank(out, S.rank);
    if (gauss) vb_glm_result_ewrss(out, ewrss);
    if (M.family == VB_BINOMIAL && S.grad_ok && status != VB_INTERRUPTED) /* dm at the returned q */
        vb_glm_result_fitted(out, &M, S.dm);
    UNPROTECT(1);
    return out;
}
