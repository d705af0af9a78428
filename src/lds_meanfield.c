/*
 * lds_meanfield.c — the meanfield E-step of the latent dynamical system.
 *
 * q = prod_t N(m_t, S_t).  With the other factors fixed, the ELBO in q(z_t)
 * is the local objective
 *   f_t = E log p(y_t | z_t) - <P_t, S_t + m_t m_t'>/2 + lin_t'm_t + log|S_t|/2,
 * P_t the prior's diagonal precision block, lin_t = [V0^{-1}m0]_t +
 * Q^{-1}A m_{t-1} + A'Q^{-1} m_{t+1}.
 *
 * Coordinate sweep (sweep()): for t = 1..T in turn, the local
 * natural-gradient step to precision P_t + J_t and linear term lin_t + h_t
 * (the pseudo-observations (J_t, h_t) of lds_model.c; exact for the
 * gaussian), damped as (1 - a) current + a proposal with a = 1, 1/2, ... by
 * vb_step_search(), so no local step decreases f_t.  Sweeps alone converge
 * linearly at a rate set by the posterior correlation between neighbouring
 * steps (hundreds of sweeps for slow dynamics).
 *
 * Joint step (joint_means > 0, the default).  Given the variances, the ELBO
 * is a smooth concave function of all the means m = (m_1, ..., m_T) whose
 * Hessian -(Lambda0 + blockdiag(J_t)) is block tridiagonal (Lambda0 the prior
 * precision), so its Newton step
 *   m* = (Lambda0 + blockdiag(J))^{-1} (Lambda0 mu0 + h)
 * is one vb_btd_solve() (btd.c), O(T d^3).  Each iteration moves every factor
 * at once: means m + a (m* - m), precisions (1 - a) S_t^{-1} + a (P_t + J_t)
 * (the factor's natural-gradient proposal), a = 1, 1/2, ... by
 * vb_step_search() on the whole ELBO.  Both parts are ascent directions
 * (Newton with a positive definite matrix; the natural gradient), so a
 * small enough a increases the ELBO, and the iteration's fixed point is the
 * meanfield optimum (gradient in m zero, S_t^{-1} = P_t + J_t).  The
 * pseudo-observations of the accepted trial are those of the next
 * iteration, so one iteration costs one observation pass per trial step
 * plus one smoother pass.  Should no step be accepted (rounding at the
 * optimum), one coordinate sweep is taken instead.
 *
 * Stopping: vb_tol_met() on the whole ELBO between iterations, counted only
 * after a full joint step (a = 1) or a sweep, so a tiny damped step does not
 * pass for convergence (VB_OK); maxit iterations (VB_MAXIT); a decrease
 * beyond LDS_ELBO_SLACK (VB_DECREASED); a non-finite ELBO (VB_NONFINITE); a
 * failed factorisation (its status).  Interrupts are polled every LDS_POLL
 * time steps and after every iteration; progress lines (unless quiet) at
 * most once a second.
 *
 * Inputs: the model, the factors m (d x T), S (d x d x T) with their
 * log-determinants logdetS (T), Sc0 (d x d x T, all zero: the
 * cross-covariances of a factorised q; also the smoother's scratch, zeroed
 * again after use), the options o.  Outputs: the factors in place, *iter
 * iterations, *passes (sweeps plus smoother passes), *elbo, *loglik, the
 * ELBO after each iteration in o->trace.  Work LDS_ESTEP_WORK(N, d) doubles,
 * and for the joint step LDS_MF_JOINT_WORK(T, d) more (o->big).  Cost per
 * sweep O(T (N d^2 + d^3)) per local trial; per joint iteration the same per
 * trial step, plus O(T d^3).
 */
#include "lds.h"

typedef struct {
    const lds_model *M;
    int t;
    const double *P, *lin, *J, *h, *Lc, *etac;
    double *Ln, *etan, *mn, *Sn, *ldS, *work;
} local_ctx;

/* Local objective of q(z_t) = N(m, S) with the others fixed. */
static double local_obj(const lds_model *M, int t, const double *m, const double *S,
                        const double *P, const double *lin, double logdetS, double *work) {
    int d = M->d;
    double *u = work, *wk = work + d;
    double val = lds_obs_term(M, t, m, S, NULL, NULL, wk);
    lds_gemv("N", d, d, 1.0, P, m, 0.0, u);
    return val - 0.5 * (lds_dot((size_t)d * d, P, S) + lds_dot(d, m, u)) + lds_dot(d, lin, m) +
           0.5 * logdetS;
}

static int local_try(double a, void *ctx_, double *value) {
    local_ctx *c = (local_ctx *)ctx_;
    int d = c->M->d, st;
    size_t dd = (size_t)d * d;
    for (size_t k = 0; k < dd; k++)
        c->Ln[k] = (1.0 - a) * c->Lc[k] + a * (c->P[k] + c->J[k]);
    for (int k = 0; k < d; k++)
        c->etan[k] = (1.0 - a) * c->etac[k] + a * (c->lin[k] + c->h[k]);
    memcpy(c->Sn, c->Ln, dd * sizeof(double));
    if ((st = lds_spd_inverse(d, c->Sn, c->ldS)) != VB_OK) return st;
    *c->ldS = -*c->ldS;
    lds_gemv("N", d, d, 1.0, c->Sn, c->etan, 0.0, c->mn);
    *value = local_obj(c->M, c->t, c->mn, c->Sn, c->P, c->lin, *c->ldS, c->work);
    return VB_OK;
}

static double total_elbo(const lds_model *M, const double *m, const double *S,
                         const double *logdetS, const double *Sc0, double *loglik, double *work) {
    double ld = 0.0;
    for (int t = 0; t < M->T; t++)
        ld += logdetS[t];
    *loglik = lds_obs_total(M, m, S, work);
    return *loglik + lds_latent_term(M, m, S, Sc0, ld, work);
}

/* The sweep's scratch at the start of work: 5 d^2 + 6 d + LDS_OBS_WORK(N, d). */
#define SWEEP_WORK(N, d) (5 * (size_t)(d) * (d) + 6 * (size_t)(d) + LDS_OBS_WORK(N, d))

/* One coordinate sweep over t, in place; a status (the factors accepted so
 * far are kept when a local step fails). */
static int sweep(const lds_model *M, double *m, double *S, double *logdetS, double *work) {
    int T = M->T, d = M->d, st;
    size_t dd = (size_t)d * d;
    double *P = work, *lin = P + dd, *J = lin + d, *h = J + dd, *Lc = h + d, *etac = Lc + dd,
           *Ln = etac + d, *etan = Ln + dd, *mn = etan + d, *Sn = mn + d, *wk = Sn + dd, ldS = 0.0;
    local_ctx ctx = {M, 0, P, lin, J, h, Lc, etac, Ln, etan, mn, Sn, &ldS, wk};
    for (int t = 0; t < T; t++) {
        double *mt = m + (size_t)t * d, *St = S + (size_t)t * dd, a, f1;
        lds_prior_diag(M, t, P);
        for (int k = 0; k < d; k++)
            lin[k] = t == 0 ? M->V0im0[k] : 0.0;
        if (t > 0) lds_gemv("N", d, d, 1.0, M->QiA, m + (size_t)(t - 1) * d, 1.0, lin);
        if (t < T - 1) lds_gemv("T", d, d, 1.0, M->QiA, m + (size_t)(t + 1) * d, 1.0, lin);
        double f0 = local_obj(M, t, mt, St, P, lin, logdetS[t], wk);
        lds_obs_term(M, t, mt, St, J, h, wk);
        memcpy(Lc, St, dd * sizeof(double)); /* the current natural parameters */
        if ((st = lds_spd_inverse(d, Lc, NULL)) == VB_OK) {
            lds_gemv("N", d, d, 1.0, Lc, mt, 0.0, etac);
            ctx.t = t;
            st = vb_step_search(local_try, &ctx, f0, &a, &f1);
        }
        if (st == VB_OK && t % LDS_POLL == LDS_POLL - 1 && vb_interrupted()) st = VB_INTERRUPTED;
        if (st != VB_OK) return st;
        memcpy(mt, mn, (size_t)d * sizeof(double));
        memcpy(St, Sn, dd * sizeof(double));
        logdetS[t] = ldS;
    }
    return VB_OK;
}

/* ------------------------------------------------------ joint step -- */

typedef struct {
    const lds_model *M;
    const double *m, *Lam, *Dst, *ms; /* current means and precisions; the proposal */
    double *mt, *St, *ldt, *Jt, *ht, *Sc0, *work;
    double loglik;
} joint_ctx;

/* The trial q_a: means m + a (m* - m), precisions (1 - a) Lam_t + a Dst_t;
 * its ELBO, and its pseudo-observations into (Jt, ht). */
static int joint_try(double a, void *ctx_, double *value) {
    joint_ctx *c = (joint_ctx *)ctx_;
    const lds_model *M = c->M;
    int d = M->d, T = M->T, st;
    size_t dd = (size_t)d * d;
    double ll = 0.0, ld = 0.0;
    for (int t = 0; t < T; t++) {
        double *St = c->St + t * dd, *mt = c->mt + (size_t)t * d;
        const double *Lt = c->Lam + t * dd, *Dt = c->Dst + t * dd, *m = c->m + (size_t)t * d,
                     *ms = c->ms + (size_t)t * d;
        for (size_t k = 0; k < dd; k++)
            St[k] = (1.0 - a) * Lt[k] + a * Dt[k];
        if ((st = lds_spd_inverse(d, St, &c->ldt[t])) != VB_OK) return st;
        c->ldt[t] = -c->ldt[t];
        ld += c->ldt[t];
        for (int k = 0; k < d; k++)
            mt[k] = m[k] + a * (ms[k] - m[k]);
        ll += lds_obs_term(M, t, mt, St, c->Jt + t * dd, c->ht + (size_t)t * d, c->work);
        if (t % LDS_POLL == LDS_POLL - 1 && vb_interrupted()) return VB_INTERRUPTED;
    }
    c->loglik = ll - M->lgy;
    *value = c->loglik + lds_latent_term(M, c->mt, c->St, c->Sc0, ld, c->work);
    return VB_OK; /* a non-finite value is the search's to judge */
}

/* Precisions Lam_t = S_t^{-1} and pseudo-observations (J_t, h_t) at (m, S);
 * returns a status, *elbo and *loglik. */
static int joint_state(const lds_model *M, const double *m, const double *S, const double *logdetS,
                       const double *Sc0, double *Lam, double *J, double *h, double *elbo,
                       double *loglik, double *work) {
    int d = M->d, T = M->T, st;
    size_t dd = (size_t)d * d;
    double ll = 0.0, ld = 0.0;
    for (int t = 0; t < T; t++) {
        memcpy(Lam + t * dd, S + t * dd, dd * sizeof(double));
        if ((st = lds_spd_inverse(d, Lam + t * dd, NULL)) != VB_OK) return st;
        ld += logdetS[t];
        ll +=
            lds_obs_term(M, t, m + (size_t)t * d, S + t * dd, J + t * dd, h + (size_t)t * d, work);
        if (t % LDS_POLL == LDS_POLL - 1 && vb_interrupted()) return VB_INTERRUPTED;
    }
    *loglik = ll - M->lgy;
    *elbo = *loglik + lds_latent_term(M, m, S, Sc0, ld, work);
    return VB_OK;
}

int lds_estep_meanfield(const lds_model *M, double *m, double *S, double *logdetS, double *Sc0,
                        const lds_mf_opts *o, int *iter, int *passes, double *elbo, double *loglik,
                        double *work) {
    int T = M->T, d = M->d, st, joint = o->joint;
    size_t dd = (size_t)d * d, Tdd = (size_t)T * dd, Td = (size_t)T * d;
    /* joint-step storage: in o->big, and after the sweep's part of work */
    double *Lam = NULL, *J = NULL, *Jn = NULL, *St = NULL, *h = NULL, *hn = NULL, *ms = NULL,
           *mt = NULL, *ldt = NULL, *negL = work + SWEEP_WORK(M->N, d), *bw = negL + dd;
    if (joint) {
        Lam = o->big;
        J = Lam + Tdd;
        Jn = J + Tdd;
        St = Jn + Tdd;
        h = St + Tdd;
        hn = h + Td;
        ms = hn + Td;
        mt = ms + Td;
        ldt = mt + Td;
        for (size_t k = 0; k < dd; k++)
            negL[k] = -M->QiA[k]; /* the prior's sub-diagonal precision block */
    }
    double *wk = work, cur, nw, ldb;
    *iter = 0;
    *passes = 0;
    st = joint ? joint_state(M, m, S, logdetS, Sc0, Lam, J, h, &cur, loglik, wk)
               : (cur = total_elbo(M, m, S, logdetS, Sc0, loglik, wk), VB_OK);
    *elbo = cur;
    if (st != VB_OK) return st;
    if (!R_FINITE(cur)) return VB_NONFINITE;
    joint_ctx jc = {M, m, Lam, J, ms, mt, St, ldt, Jn, hn, Sc0, wk, 0.0};
    for (int it = 1; it <= o->maxit; it++) {
        int full = 1, swept = !joint;
        *iter = it;
        if (joint) {
            double a = 0.0, val;
            for (int t = 0; t < T; t++) { /* the proposal: prior + pseudo-observations */
                double *Dt = J + t * dd, *bt = h + (size_t)t * d, *P = bw;
                lds_prior_diag(M, t, P);
                for (size_t k = 0; k < dd; k++)
                    Dt[k] += P[k];
                if (t == 0)
                    for (int k = 0; k < d; k++)
                        bt[k] += M->V0im0[k];
            }
            /* St and Sc0 are the smoother's scratch here: only m* is used */
            st = vb_btd_solve(T, d, J, negL, 0, h, ms, St, Sc0, &ldb, bw);
            memset(Sc0, 0, Tdd * sizeof(double));
            (*passes)++;
            if (st != VB_OK) return st; /* the factors are unchanged, *elbo is theirs */
            jc.Lam = Lam;
            jc.Dst = J;
            jc.Jt = Jn;
            jc.ht = hn;
            st = vb_step_search(joint_try, &jc, cur, &a, &val);
            if (st == VB_INTERRUPTED) return st;
            if (st == VB_OK) {
                memcpy(m, mt, Td * sizeof(double));
                memcpy(S, St, Tdd * sizeof(double));
                memcpy(logdetS, ldt, (size_t)T * sizeof(double));
                for (size_t k = 0; k < Tdd; k++)
                    Lam[k] = (1.0 - a) * Lam[k] + a * J[k];
                double *tmp = J; /* the accepted trial's pseudo-observations are next */
                J = Jn;
                Jn = tmp;
                tmp = h;
                h = hn;
                hn = tmp;
                nw = val;
                *loglik = jc.loglik;
                full = a == 1.0;
            } else
                swept = 1; /* no joint step: a coordinate sweep instead */
        }
        if (swept) {
            st = sweep(M, m, S, logdetS, wk);
            (*passes)++;
            if (st == VB_OK && joint)
                st = joint_state(M, m, S, logdetS, Sc0, Lam, J, h, &nw, loglik, wk);
            else if (st == VB_OK)
                nw = total_elbo(M, m, S, logdetS, Sc0, loglik, wk);
            if (st != VB_OK) { /* keep the factors accepted so far, and their ELBO */
                *elbo = total_elbo(M, m, S, logdetS, Sc0, loglik, wk);
                return st;
            }
        }
        *elbo = nw;
        if (o->trace) vb_trace_push(o->trace, nw);
        if (o->progress) vb_progress_tick(o->progress, "vb_lds() meanfield E-step", it, nw);
        if (vb_interrupted()) return VB_INTERRUPTED;
        if (!R_FINITE(nw)) return VB_NONFINITE;
        if (nw < cur - LDS_ELBO_SLACK * (1.0 + fabs(cur))) return VB_DECREASED;
        if (full && vb_tol_met(cur, nw, o->tol)) return VB_OK;
        cur = nw;
    }
    return VB_MAXIT;
}
