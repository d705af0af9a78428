/*
 * lds.c — variational inference for latent linear dynamical systems.
 *
 * Model (one trial of T bins, N units, latent dimension d):
 *   z_1 ~ N(m0, V0),  z_t = A z_{t-1} + w_t,  w_t ~ N(0, Q);
 *   gaussian: y_ti = c_i'z_t + d_i + e_ti,  e_ti ~ N(0, R_i);
 *   poisson:  y_ti ~ Poisson(exp(off_t + c_i'z_t + d_i))  (off_t = log exposure).
 * A missing y_ti (NA/NaN) simply contributes nothing.
 *
 * Every q is Gaussian.  "structured" q(z_{1:T}) has a block-tridiagonal
 * precision Lambda (diagonal blocks D_t, sub-diagonal blocks L_t =
 * Lambda_{t,t-1}) and linear term b.  Every q the E-step visits has the same
 * L_t = L for all t (the prior's -Q^{-1}A, or a convex combination of those
 * for successive parameter values), so L is stored once; btd_solve() turns (D, L, b) into the
 * moments the ELBO needs (m_t, Sigma_tt, Sigma_{t,t-1}, log|Sigma|) by an
 * information-form forward elimination (the Kalman filter) and a backward
 * pass (the RTS smoother), O(T d^3) time and O(T d^2) memory.
 *
 * E-step (structured).  Each observation block enters through pseudo-
 * observations (J_t, h_t): exact for gaussian (J_t = C'R^{-1}C,
 * h_t = C'R^{-1}(y_t - d)), so one pass gives the exact posterior and the
 * ELBO equals log p(y); for poisson the fixed point (NCVMP, natural-
 * gradient step of size 1) J_t = C'diag(w_t)C, h_t = J_t m_t + C'(y_t - w_t),
 * w_t = exp(off_t + C m_t + d + diag(C Sigma_tt C')/2).  The proposal is
 * (prior precision + blockdiag J, prior linear term + h); the step is taken in
 * natural parameters with a = 1, 1/2, ... until the ELBO does not decrease, so
 * the trace is monotone even when q was left by other parameter values.
 *
 * E-step (meanfield).  q = prod_t N(m_t, S_t), block coordinate ascent over t
 * with the same local natural-gradient step and halving (exact for gaussian).
 *
 * ELBO = sum_t E log p(y_t | z_t) + E log p(z) + 1/2 log|Sigma| + Td/2 (1 + log 2 pi),
 * where E log p(z) needs only m_t, Sigma_tt and Sigma_{t,t-1}.  The pass that
 * evaluates a q's ELBO also stores its (J_t, h_t), so each fixed-point
 * iteration costs one observation pass and one smoother pass.
 * Cost per E-step iteration O(T (N d^2 + d^3)); memory O(T d^2) (about 8 T d^2
 * doubles for the current and trial q).
 *
 * Entry points: C_lds_estep(y, off, family, params, state, approx, control),
 * C_lds_poisson_mstep(y, off, m, S, C, d, control); see their comments.
 *
 * M-step helper (poisson): Newton with step halving, unit by unit, on the
 * concave expected log-likelihood in (c_i, d_i), O(T d^2) per unit and step.
 */
#include "vbayes.h"
#include <string.h>

#define LOG2PI 1.837877066409345483560659472811

typedef struct {
    int T, N, d, family; /* family: 0 gaussian, 1 poisson */
    const double *y;     /* T x N, NaN = missing */
    const double *off;   /* length T (poisson log exposure) */
    const double *A, *Q, *C, *dv, *R, *m0, *V0;
    double *Qi, *V0i, *QiA, *AtQiA, *V0im0;
    double ldQ, ldV0, lgy; /* log|Q|, log|V0|, sum of lgamma(y+1) */
    int *rowobs;           /* 1 if every unit is observed in bin t */
    double *Jg, gconst;    /* gaussian: C'R^{-1}C and -sum_i log(2 pi R_i) / 2 */
} lds_model;

/* ---------- small dense helpers (column-major, d x d) ---------- */

static void mat_mult(const char *ta, const char *tb, int n, int k, int m, double alpha,
                     const double *X, int ldx, const double *Y, int ldy, double beta, double *Z,
                     int ldz) {
    /* Z = alpha op(X) op(Y) + beta Z; op(X) is n x k, op(Y) is k x m */
    F77_CALL(dgemm)(ta, tb, &n, &m, &k, &alpha, X, &ldx, Y, &ldy, &beta, Z, &ldz FCONE FCONE);
}

static void mat_vec(const char *ta, int nr, int nc, double alpha, const double *X, const double *x,
                    double beta, double *y) {
    int one = 1;
    F77_CALL(dgemv)(ta, &nr, &nc, &alpha, X, &nr, x, &one, &beta, y, &one FCONE);
}

/* In place: A (p x p, SPD) -> A^{-1}; *logdet gets log|A|. Status code. */
static int spd_inverse(int p, double *A, double *logdet) {
    int info = vb_chol(p, A, p);
    if (info) return info;
    if (logdet) *logdet = vb_chol_logdet(p, A, p);
    return vb_chol_inv(p, A, p);
}

static double dot(int n, const double *a, const double *b) {
    double s = 0.0;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* Prior precision blocks of z_{1:T}: diagonal block t into D, sub-diagonal
 * block L_t = -Q^{-1}A (t >= 1), linear term b0_t. */
static void prior_diag(const lds_model *M, int T, int t, double *D) {
    int dd = M->d * M->d;
    for (int k = 0; k < dd; k++) {
        double v = 0.0;
        if (t == 0)
            v += M->V0i[k];
        else
            v += M->Qi[k];
        if (t < T - 1) v += M->AtQiA[k];
        D[k] = v;
    }
}

/*
 * Block-tridiagonal solve.  Lambda has diagonal blocks D[t] and sub-diagonal
 * blocks L[t] = Lambda_{t,t-1} (t >= 1; L advances by lstride, 0 = constant).
 * Outputs m = Lambda^{-1} b, S[t] = Sigma_tt, Sc[t] = Sigma_{t,t-1} (Sc[0] = 0)
 * and log|Sigma|.  work: 3 d^2 + d doubles.
 */
static int btd_solve(int T, int d, const double *D, const double *L, int lstride, const double *b,
                     double *m, double *S, double *Sc, double *logdet, double *work) {
    int dd = d * d, info;
    double *K = work, *G = work + dd, *H = work + 2 * dd, *v = work + 3 * dd;
    double ld = 0.0, ldF = 0.0;
    /* forward: F_t = D_t - L_t F_{t-1}^{-1} L_t', f_t = b_t - L_t F_{t-1}^{-1} f_{t-1} */
    for (int t = 0; t < T; t++) {
        double *F = S + (size_t)t * dd, *f = m + (size_t)t * d;
        memcpy(F, D + (size_t)t * dd, dd * sizeof(double));
        memcpy(f, b + (size_t)t * d, d * sizeof(double));
        if (t > 0) {
            const double *Lt = L + (size_t)t * lstride, *Fp = S + (size_t)(t - 1) * dd;
            mat_mult("N", "N", d, d, d, 1.0, Lt, d, Fp, d, 0.0, K, d);
            mat_mult("N", "T", d, d, d, -1.0, K, d, Lt, d, 1.0, F, d);
            mat_vec("N", d, d, -1.0, K, m + (size_t)(t - 1) * d, 1.0, f);
            vb_symmetrize(d, F);
        }
        if ((info = spd_inverse(d, F, &ldF))) return info;
        ld += ldF;
        if ((t & 1023) == 1023) R_CheckUserInterrupt();
    }
    /* backward: z_t | z_{t+1} ~ N(F_t^{-1} f_t + G_t z_{t+1}, F_t^{-1}), G_t = -F_t^{-1} L_{t+1}'
     */
    {
        double *f = m + (size_t)(T - 1) * d;
        mat_vec("N", d, d, 1.0, S + (size_t)(T - 1) * dd, f, 0.0, v);
        memcpy(f, v, d * sizeof(double));
    }
    memset(Sc, 0, dd * sizeof(double));
    for (int t = T - 2; t >= 0; t--) {
        double *Fi = S + (size_t)t * dd, *f = m + (size_t)t * d;
        const double *Ln = L + (size_t)(t + 1) * lstride, *Sn = S + (size_t)(t + 1) * dd;
        mat_mult("N", "T", d, d, d, -1.0, Fi, d, Ln, d, 0.0, G, d);
        mat_vec("N", d, d, 1.0, Fi, f, 0.0, v);
        mat_vec("N", d, d, 1.0, G, m + (size_t)(t + 1) * d, 1.0, v);
        memcpy(f, v, d * sizeof(double));
        /* Sigma_{t+1,t} = Sigma_{t+1} G_t';  Sigma_tt = F_t^{-1} + G_t Sigma_{t+1} G_t' */
        double *Sct = Sc + (size_t)(t + 1) * dd;
        mat_mult("N", "T", d, d, d, 1.0, Sn, d, G, d, 0.0, Sct, d);
        mat_mult("N", "N", d, d, d, 1.0, G, d, Sct, d, 0.0, H, d);
        for (int k = 0; k < dd; k++)
            Fi[k] += H[k];
        vb_symmetrize(d, Fi);
        if ((t & 1023) == 1023) R_CheckUserInterrupt();
    }
    *logdet = -ld;
    return 0;
}

/*
 * E log p(y_t | z_t) under z_t ~ N(m, S) (without the lgamma(y+1) constant
 * for poisson) and, if J != NULL, the pseudo-observations (J_t, h_t) of the
 * natural-gradient step.  work: 2 N d + 3 N doubles.
 */
static double obs_term(const lds_model *M, int t, const double *m, const double *S, double *J,
                       double *h, double *work) {
    int N = M->N, d = M->d, T = M->T;
    double *CS = work, *eta = work + (size_t)N * d, *wt = eta + N, *r = wt + N, *wk = r + N;
    double val = 0.0;
    for (int i = 0; i < N; i++)
        eta[i] = M->dv[i];
    mat_vec("N", N, d, 1.0, M->C, m, 1.0, eta);
    if (M->family == 0 && M->rowobs[t]) {
        /* gaussian, all units observed: sum_i c_i'S c_i / R_i = <C'R^{-1}C, S>, and the
         * pseudo-observation precision is the constant C'R^{-1}C */
        val = M->gconst - 0.5 * dot(d * d, M->Jg, S);
        for (int i = 0; i < N; i++) {
            double yi = M->y[t + (size_t)i * T], ri = 1.0 / M->R[i], res = yi - eta[i];
            val -= 0.5 * res * res * ri;
            r[i] = (yi - M->dv[i]) * ri;
        }
        if (J) {
            memcpy(J, M->Jg, d * d * sizeof(double));
            mat_vec("T", N, d, 1.0, M->C, r, 0.0, h);
        }
        return val;
    }
    F77_CALL(dsymm)
    ("R", "U", &N, &d, &(double){1.0}, S, &d, M->C, &N, &(double){0.0}, CS, &N FCONE FCONE);
    for (int i = 0; i < N; i++) {
        double yi = M->y[t + (size_t)i * T];
        double vi = 0.0;
        for (int k = 0; k < d; k++)
            vi += CS[i + (size_t)k * N] * M->C[i + (size_t)k * N];
        if (ISNAN(yi)) {
            wt[i] = 0.0;
            r[i] = 0.0;
            continue;
        }
        if (M->family == 1) {
            double e = eta[i] + M->off[t];
            double w = exp(e + 0.5 * vi);
            val += yi * e - w;
            wt[i] = w;
            r[i] = yi - w;
        } else {
            double ri = 1.0 / M->R[i], res = yi - eta[i];
            val += -0.5 * (LOG2PI + log(M->R[i])) - 0.5 * (res * res + vi) * ri;
            wt[i] = ri;
            r[i] = (yi - M->dv[i]) * ri;
        }
    }
    if (J) {
        vb_xtwx(N, d, M->C, N, wt, wk, J);
        mat_vec("T", N, d, 1.0, M->C, r, 0.0, h);
        if (M->family == 1) mat_vec("N", d, d, 1.0, J, m, 1.0, h);
    }
    return val;
}

/* E_q log p(z) + entropy, from m, S (Sigma_tt), Sc (Sigma_{t,t-1}) and log|Sigma|. */
static double latent_term(const lds_model *M, int T, const double *m, const double *S,
                          const double *Sc, double logdet, double *work) {
    int d = M->d, dd = d * d;
    double *e = work, *u = work + d;
    double val = 0.0;
    for (int t = 0; t < T; t++) {
        const double *mt = m + (size_t)t * d, *St = S + (size_t)t * dd;
        double q;
        if (t == 0) {
            for (int k = 0; k < d; k++)
                e[k] = mt[k] - M->m0[k];
            mat_vec("N", d, d, 1.0, M->V0i, e, 0.0, u);
            q = dot(d, e, u) + dot(dd, M->V0i, St) + M->ldV0;
        } else {
            memcpy(e, mt, d * sizeof(double));
            mat_vec("N", d, d, -1.0, M->A, m + (size_t)(t - 1) * d, 1.0, e);
            mat_vec("N", d, d, 1.0, M->Qi, e, 0.0, u);
            q = dot(d, e, u) + dot(dd, M->Qi, St) - 2.0 * dot(dd, M->QiA, Sc + (size_t)t * dd) +
                dot(dd, M->AtQiA, S + (size_t)(t - 1) * dd) + M->ldQ;
        }
        val += -0.5 * (q + d * LOG2PI);
    }
    return val + 0.5 * logdet + 0.5 * T * d * (1.0 + LOG2PI);
}

static double obs_total(const lds_model *M, const double *m, const double *S, double *work) {
    int d = M->d, dd = d * d;
    double val = 0.0;
    for (int t = 0; t < M->T; t++)
        val += obs_term(M, t, m + (size_t)t * d, S + (size_t)t * dd, NULL, NULL, work);
    return val - M->lgy;
}

/* ---------- structured E-step ---------- */

/* A structured q: natural parameters (D, L, b), moments (m, S, Sc, logdet),
 * its ELBO and the pseudo-observations (J, h) of the next natural-gradient
 * step, computed in the same pass as the ELBO. */
typedef struct {
    double *D, *L, *b, *m, *S, *Sc, *J, *h, logdet, elbo, loglik;
} btd_q;

static int q_moments(const lds_model *M, btd_q *q, double *work) {
    int d = M->d, dd = d * d;
    int info = btd_solve(M->T, d, q->D, q->L, 0, q->b, q->m, q->S, q->Sc, &q->logdet, work);
    if (info) return info;
    double ll = 0.0;
    for (int t = 0; t < M->T; t++)
        ll +=
            obs_term(M, t, q->m + (size_t)t * d, q->S + (size_t)t * dd,
                     q->J ? q->J + (size_t)t * dd : NULL, q->h ? q->h + (size_t)t * d : NULL, work);
    q->loglik = ll - M->lgy;
    q->elbo = q->loglik + latent_term(M, M->T, q->m, q->S, q->Sc, q->logdet, work);
    return 0;
}

/* cur holds the current q (natural parameters and moments); try is scratch.
 * Returns a status code; *iter, *conv report the iterations. */
static int estep_structured(const lds_model *M, btd_q *cur, btd_q *try, int maxit, double tol,
                            int *iter, int *conv, int *passes, double *work) {
    int T = M->T, d = M->d, dd = d * d, info;
    double *D0 = work, *Jw = D0 + dd, *hw = Jw + dd, *wk = hw + d;
    *conv = 0;
    *iter = 0;
    if (M->family == 0) {
        /* exact in one pass: the pseudo-observations do not depend on q */
        memset(D0, 0, dd * sizeof(double));
        for (int t = 0; t < T; t++) {
            double *Dt = cur->D + (size_t)t * dd, *bt = cur->b + (size_t)t * d;
            obs_term(M, t, D0, D0, Jw, hw, wk); /* J, h only (zero q) */
            prior_diag(M, T, t, Dt);
            for (int k = 0; k < dd; k++)
                Dt[k] += Jw[k];
            for (int k = 0; k < d; k++)
                bt[k] = hw[k] + (t == 0 ? M->V0im0[k] : 0.0);
        }
        for (int k = 0; k < dd; k++)
            cur->L[k] = -M->QiA[k];
        if ((info = q_moments(M, cur, wk))) return info;
        *iter = 1;
        *conv = 1;
        *passes = 1;
        return 0;
    }
    if ((info = q_moments(M, cur, wk))) return info;
    *passes = 1;
    for (int it = 1; it <= maxit; it++) {
        double a = 1.0;
        int accepted = 0;
        for (int halve = 0; halve < 30; halve++, a *= 0.5) {
            for (int k = 0; k < dd; k++)
                try->L[k] = (1.0 - a) * cur->L[k] - a * M->QiA[k];
            for (int t = 0; t < T; t++) {
                double *Dt = try->D + (size_t)t * dd, *bt = try->b + (size_t)t * d;
                const double *Dc = cur->D + (size_t)t * dd, *bc = cur->b + (size_t)t * d;
                const double *Jt = cur->J + (size_t)t * dd, *ht = cur->h + (size_t)t * d;
                prior_diag(M, T, t, D0);
                for (int k = 0; k < dd; k++)
                    Dt[k] = (1.0 - a) * Dc[k] + a * (D0[k] + Jt[k]);
                for (int k = 0; k < d; k++)
                    bt[k] = (1.0 - a) * bc[k] + a * (ht[k] + (t == 0 ? M->V0im0[k] : 0.0));
            }
            info = q_moments(M, try, wk);
            (*passes)++;
            if (info == 0 && try->elbo >= cur->elbo) {
                accepted = 1;
                break;
            }
            /* a full step that loses only at rounding level: at the fixed point */
            if (info == 0 && a == 1.0 && cur->elbo - try->elbo <= 1e-12 * (1.0 + fabs(cur->elbo)))
                break;
        }
        *iter = it;
        if (!accepted) {
            *conv = 1; /* no ascent left at machine precision */
            break;
        }
        double change = try->elbo - cur->elbo;
        btd_q tmp = *cur;
        *cur = *try;
        *try = tmp;
        if (change <= tol * (1.0 + fabs(cur->elbo))) {
            *conv = 1;
            break;
        }
    }
    return 0;
}

/* ---------- meanfield E-step ---------- */

/* Local objective of q(z_t) = N(m, S) with the others fixed. */
static double mf_local(const lds_model *M, int t, const double *m, const double *S, const double *P,
                       const double *lin, double logdetS, double *work) {
    int d = M->d;
    double *u = work;
    double *wk = work + d;
    double val = obs_term(M, t, m, S, NULL, NULL, wk);
    mat_vec("N", d, d, 1.0, P, m, 0.0, u);
    val += -0.5 * (dot(d * d, P, S) + dot(d, m, u)) + dot(d, lin, m) + 0.5 * logdetS;
    return val;
}

static int estep_meanfield(const lds_model *M, double *m, double *S, double *logdetS, int maxit,
                           double tol, int *iter, int *conv, double *elbo, double *loglik,
                           double *work, double *Sc0) {
    int T = M->T, d = M->d, dd = d * d, info;
    double *P = work, *lin = P + dd, *J = lin + d, *h = J + dd, *Lc = h + d, *etac = Lc + dd,
           *Ln = etac + d, *etan = Ln + dd, *mn = etan + d, *Sn = mn + d, *wk = Sn + dd;
    double ldS, ld;
    *conv = 0;
    *iter = 0;
    ld = 0.0;
    for (int t = 0; t < T; t++)
        ld += logdetS[t];
    *loglik = obs_total(M, m, S, wk);
    double cur = *loglik + latent_term(M, T, m, S, Sc0, ld, wk);
    for (int it = 1; it <= maxit; it++) {
        for (int t = 0; t < T; t++) {
            double *mt = m + (size_t)t * d, *St = S + (size_t)t * dd;
            prior_diag(M, T, t, P);
            for (int k = 0; k < d; k++)
                lin[k] = (t == 0) ? M->V0im0[k] : 0.0;
            if (t > 0) mat_vec("N", d, d, 1.0, M->QiA, m + (size_t)(t - 1) * d, 1.0, lin);
            if (t < T - 1) mat_vec("T", d, d, 1.0, M->QiA, m + (size_t)(t + 1) * d, 1.0, lin);
            double f0 = mf_local(M, t, mt, St, P, lin, logdetS[t], wk);
            obs_term(M, t, mt, St, J, h, wk);
            /* current natural parameters of q(z_t) */
            memcpy(Lc, St, dd * sizeof(double));
            if ((info = spd_inverse(d, Lc, NULL))) return info;
            mat_vec("N", d, d, 1.0, Lc, mt, 0.0, etac);
            double a = 1.0;
            for (int halve = 0; halve < 40; halve++, a *= 0.5) {
                for (int k = 0; k < dd; k++)
                    Ln[k] = (1.0 - a) * Lc[k] + a * (P[k] + J[k]);
                for (int k = 0; k < d; k++)
                    etan[k] = (1.0 - a) * etac[k] + a * (lin[k] + h[k]);
                memcpy(Sn, Ln, dd * sizeof(double));
                if ((info = spd_inverse(d, Sn, &ldS))) return info;
                ldS = -ldS;
                mat_vec("N", d, d, 1.0, Sn, etan, 0.0, mn);
                double f1 = mf_local(M, t, mn, Sn, P, lin, ldS, wk);
                if (f1 >= f0 || (M->family == 0 && a == 1.0)) {
                    memcpy(mt, mn, d * sizeof(double));
                    memcpy(St, Sn, dd * sizeof(double));
                    logdetS[t] = ldS;
                    break;
                }
                if (a == 1.0 && f0 - f1 <= 1e-13 * (1.0 + fabs(f0)))
                    break; /* at the local optimum up to rounding */
            }
            if ((t & 1023) == 1023) R_CheckUserInterrupt();
        }
        ld = 0.0;
        for (int t = 0; t < T; t++)
            ld += logdetS[t];
        *loglik = obs_total(M, m, S, wk);
        double nw = *loglik + latent_term(M, T, m, S, Sc0, ld, wk);
        *iter = it;
        double change = nw - cur;
        cur = nw;
        if (fabs(change) <= tol * (1.0 + fabs(cur))) {
            *conv = 1;
            break;
        }
    }
    *elbo = cur;
    return 0;
}

/* ---------- .Call wrappers ---------- */

static SEXP list_get(SEXP list, const char *name) {
    SEXP nms = Rf_getAttrib(list, R_NamesSymbol);
    if (!Rf_isNull(nms))
        for (int i = 0; i < Rf_length(list); i++)
            if (strcmp(CHAR(STRING_ELT(nms, i)), name) == 0) return VECTOR_ELT(list, i);
    return R_NilValue;
}

static const double *real_elt(SEXP list, const char *name, R_xlen_t len) {
    SEXP x = list_get(list, name);
    if (TYPEOF(x) != REALSXP || XLENGTH(x) != len)
        Rf_error("lds: element '%s' must be a double vector of length %lld", name, (long long)len);
    return REAL(x);
}

static SEXP new_real(R_xlen_t n, int *np) {
    SEXP x = PROTECT(Rf_allocVector(REALSXP, n));
    (*np)++;
    return x;
}

static void set_dim3(SEXP x, int a, int b, int c) {
    SEXP dim = PROTECT(Rf_allocVector(INTSXP, 3));
    INTEGER(dim)[0] = a;
    INTEGER(dim)[1] = b;
    INTEGER(dim)[2] = c;
    Rf_setAttrib(x, R_DimSymbol, dim);
    UNPROTECT(1);
}

/* Unpack y (T x N), off (T), the params list; derived quantities from R_alloc. */
static void unpack_model(lds_model *M, SEXP y, SEXP off, SEXP family, SEXP params) {
    if (TYPEOF(y) != REALSXP || !Rf_isMatrix(y)) Rf_error("lds: 'y' must be a double matrix");
    if (TYPEOF(params) != VECSXP) Rf_error("lds: 'params' must be a list");
    if (TYPEOF(family) != INTSXP || XLENGTH(family) != 1) Rf_error("lds: bad family code");
    M->T = Rf_nrows(y);
    M->N = Rf_ncols(y);
    M->family = INTEGER(family)[0];
    if (M->family != 0 && M->family != 1) Rf_error("lds: bad family code");
    if (M->T < 1 || M->N < 1) Rf_error("lds: 'y' has no rows or columns");
    if (TYPEOF(off) != REALSXP || XLENGTH(off) != M->T)
        Rf_error("lds: 'off' must be a double vector with one entry per time bin");
    SEXP Am = list_get(params, "A");
    if (TYPEOF(Am) != REALSXP || !Rf_isMatrix(Am) || Rf_nrows(Am) != Rf_ncols(Am))
        Rf_error("lds: params$A must be a square double matrix");
    int d = M->d = Rf_nrows(Am), N = M->N, dd = d * d, info;
    if (d < 1) Rf_error("lds: latent dimension must be at least 1");
    M->y = REAL(y);
    M->off = REAL(off);
    M->A = REAL(Am);
    M->Q = real_elt(params, "Q", dd);
    M->C = real_elt(params, "C", (R_xlen_t)N * d);
    M->dv = real_elt(params, "d", N);
    M->R = real_elt(params, "R", N);
    M->m0 = real_elt(params, "m0", d);
    M->V0 = real_elt(params, "V0", dd);
    if (M->family == 0)
        for (int i = 0; i < N; i++)
            if (!(M->R[i] > 0.0) || !R_FINITE(M->R[i])) Rf_error("lds: R must be positive");
    M->Qi = (double *)R_alloc(dd, sizeof(double));
    M->V0i = (double *)R_alloc(dd, sizeof(double));
    M->QiA = (double *)R_alloc(dd, sizeof(double));
    M->AtQiA = (double *)R_alloc(dd, sizeof(double));
    M->V0im0 = (double *)R_alloc(d, sizeof(double));
    memcpy(M->Qi, M->Q, dd * sizeof(double));
    if ((info = spd_inverse(d, M->Qi, &M->ldQ))) vb_linalg_error(info, "lds: Q");
    memcpy(M->V0i, M->V0, dd * sizeof(double));
    if ((info = spd_inverse(d, M->V0i, &M->ldV0))) vb_linalg_error(info, "lds: V0");
    mat_mult("N", "N", d, d, d, 1.0, M->Qi, d, M->A, d, 0.0, M->QiA, d);
    mat_mult("T", "N", d, d, d, 1.0, M->A, d, M->QiA, d, 0.0, M->AtQiA, d);
    vb_symmetrize(d, M->AtQiA);
    mat_vec("N", d, d, 1.0, M->V0i, M->m0, 0.0, M->V0im0);
    M->rowobs = (int *)R_alloc(M->T, sizeof(int));
    for (int t = 0; t < M->T; t++) {
        int all = 1;
        for (int i = 0; i < N && all; i++)
            if (ISNAN(M->y[t + (size_t)i * M->T])) all = 0;
        M->rowobs[t] = all;
    }
    M->Jg = (double *)R_alloc(dd, sizeof(double));
    M->gconst = 0.0;
    if (M->family == 0) {
        double *wt = (double *)R_alloc(N, sizeof(double)),
               *wk = (double *)R_alloc((size_t)N * d, sizeof(double));
        for (int i = 0; i < N; i++) {
            wt[i] = 1.0 / M->R[i];
            M->gconst -= 0.5 * (LOG2PI + log(M->R[i]));
        }
        vb_xtwx(N, d, M->C, N, wt, wk, M->Jg);
    }
    M->lgy = 0.0;
    if (M->family == 1) {
        for (R_xlen_t k = 0; k < (R_xlen_t)M->T * N; k++) {
            double v = M->y[k];
            if (ISNAN(v)) continue;
            if (v < 0 || v != floor(v)) Rf_error("lds: poisson counts must be whole numbers >= 0");
            M->lgy += lgammafn(v + 1.0);
        }
        for (int t = 0; t < M->T; t++)
            if (!R_FINITE(M->off[t])) Rf_error("lds: the log exposure must be finite");
    }
}

/*
 * C_lds_estep(y, off, family, params, state, approx, control)
 *   approx 0 structured: state NULL or list(D (d x d x T), L (d x d), b (d x T)),
 *   the natural parameters of q;
 *   approx 1 meanfield:  state NULL or list(m, S) of the factors.
 *   control = c(maxit, tol).
 * Returns list(m, S, Sc, logdet, D, L, b, elbo, loglik, iterations, converged,
 * passes = number of smoother (structured) or sweep (meanfield) passes).
 */
SEXP C_lds_estep(SEXP y, SEXP off, SEXP family, SEXP params, SEXP state, SEXP approx,
                 SEXP control) {
    lds_model M;
    int np = 0, info, iter = 0, conv = 0, passes = 0;
    unpack_model(&M, y, off, family, params);
    if (TYPEOF(approx) != INTSXP || XLENGTH(approx) != 1) Rf_error("lds: bad approx code");
    if (TYPEOF(control) != REALSXP || XLENGTH(control) != 2) Rf_error("lds: bad control");
    int ap = INTEGER(approx)[0], maxit = (int)REAL(control)[0];
    double tol = REAL(control)[1];
    if (maxit < 1) maxit = 1;
    int T = M.T, d = M.d, N = M.N, dd = d * d;
    if (!Rf_isNull(state) && TYPEOF(state) != VECSXP) Rf_error("lds: 'state' must be a list");
    size_t nwork = (size_t)2 * N * d + 3 * N + (size_t)N * d + 12 * dd + 12 * d + 64;
    double *work = (double *)R_alloc(nwork, sizeof(double));

    SEXP m = new_real((R_xlen_t)d * T, &np), S = new_real((R_xlen_t)dd * T, &np),
         Sc = new_real((R_xlen_t)dd * T, &np);
    SEXP D = R_NilValue, L = R_NilValue, b = R_NilValue;
    double logdet = 0.0, elbo = 0.0, loglik = 0.0;

    if (ap == 0) {
        /* gaussian needs neither a trial q nor the pseudo-observations of the next
         * step, and returns no natural parameters (its E-step is exact from any start) */
        int pois = M.family == 1;
        double *Dp;
        if (pois) {
            D = new_real((R_xlen_t)dd * T, &np);
            Dp = REAL(D);
        } else
            Dp = (double *)R_alloc((size_t)dd * T, sizeof(double));
        L = new_real(dd, &np);
        b = new_real((R_xlen_t)d * T, &np);
        btd_q cur = {Dp,
                     REAL(L),
                     REAL(b),
                     REAL(m),
                     REAL(S),
                     REAL(Sc),
                     pois ? (double *)R_alloc((size_t)dd * T, sizeof(double)) : NULL,
                     pois ? (double *)R_alloc((size_t)d * T, sizeof(double)) : NULL,
                     0,
                     0,
                     0};
        btd_q try = {NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, 0};
        if (pois) {
            try.D = (double *)R_alloc((size_t)dd * T, sizeof(double));
            try.L = (double *)R_alloc(dd, sizeof(double));
            try.b = (double *)R_alloc((size_t)d * T, sizeof(double));
            try.m = (double *)R_alloc((size_t)d * T, sizeof(double));
            try.S = (double *)R_alloc((size_t)dd * T, sizeof(double));
            try.Sc = (double *)R_alloc((size_t)dd * T, sizeof(double));
            try.J = (double *)R_alloc((size_t)dd * T, sizeof(double));
            try.h = (double *)R_alloc((size_t)d * T, sizeof(double));
        }
        if (!pois) {
            /* filled by estep_structured */
        } else if (Rf_isNull(state)) {
            for (int k = 0; k < dd; k++)
                cur.L[k] = -M.QiA[k];
            for (int t = 0; t < T; t++) {
                prior_diag(&M, T, t, cur.D + (size_t)t * dd);
                for (int k = 0; k < d; k++)
                    cur.b[(size_t)t * d + k] = t == 0 ? M.V0im0[k] : 0.0;
            }
        } else {
            memcpy(cur.D, real_elt(state, "D", (R_xlen_t)dd * T), (size_t)dd * T * sizeof(double));
            memcpy(cur.L, real_elt(state, "L", dd), dd * sizeof(double));
            memcpy(cur.b, real_elt(state, "b", (R_xlen_t)d * T), (size_t)d * T * sizeof(double));
        }
        info = estep_structured(&M, &cur, &try, maxit, tol, &iter, &conv, &passes, work);
        if (info) vb_linalg_error(info, "lds: the posterior precision of the latent path");
        /* the swap may have left the result in the scratch arrays */
        if (pois && cur.D != REAL(D)) {
            memcpy(REAL(D), cur.D, (size_t)dd * T * sizeof(double));
            memcpy(REAL(L), cur.L, dd * sizeof(double));
            memcpy(REAL(b), cur.b, (size_t)d * T * sizeof(double));
            memcpy(REAL(m), cur.m, (size_t)d * T * sizeof(double));
            memcpy(REAL(S), cur.S, (size_t)dd * T * sizeof(double));
            memcpy(REAL(Sc), cur.Sc, (size_t)dd * T * sizeof(double));
        }
        logdet = cur.logdet;
        elbo = cur.elbo;
        loglik = cur.loglik;
        if (pois) set_dim3(D, d, d, T);
        {
            SEXP dim = PROTECT(Rf_allocVector(INTSXP, 2));
            INTEGER(dim)[0] = d;
            INTEGER(dim)[1] = d;
            Rf_setAttrib(L, R_DimSymbol, dim);
            UNPROTECT(1);
        }
        {
            SEXP dim = PROTECT(Rf_allocVector(INTSXP, 2));
            INTEGER(dim)[0] = d;
            INTEGER(dim)[1] = T;
            Rf_setAttrib(b, R_DimSymbol, dim);
            UNPROTECT(1);
        }
    } else {
        double *lds = (double *)R_alloc(T, sizeof(double));
        memset(REAL(Sc), 0, (size_t)dd * T * sizeof(double));
        if (Rf_isNull(state)) {
            double *P = work;
            for (int t = 0; t < T; t++) {
                prior_diag(&M, T, t, P);
                double *St = REAL(S) + (size_t)t * dd;
                memcpy(St, P, dd * sizeof(double));
                if ((info = spd_inverse(d, St, &lds[t]))) vb_linalg_error(info, "lds: prior block");
                lds[t] = -lds[t];
                /* start at the prior mean path */
                double *mt = REAL(m) + (size_t)t * d;
                if (t == 0)
                    memcpy(mt, M.m0, d * sizeof(double));
                else
                    mat_vec("N", d, d, 1.0, M.A, mt - d, 0.0, mt);
            }
        } else {
            memcpy(REAL(m), real_elt(state, "m", (R_xlen_t)d * T), (size_t)d * T * sizeof(double));
            memcpy(REAL(S), real_elt(state, "S", (R_xlen_t)dd * T),
                   (size_t)dd * T * sizeof(double));
            for (int t = 0; t < T; t++) {
                double *P = work;
                memcpy(P, REAL(S) + (size_t)t * dd, dd * sizeof(double));
                if ((info = vb_chol(d, P, d))) vb_linalg_error(info, "lds: state$S");
                lds[t] = vb_chol_logdet(d, P, d);
            }
        }
        info = estep_meanfield(&M, REAL(m), REAL(S), lds, maxit, tol, &iter, &conv, &elbo, &loglik,
                               work, REAL(Sc));
        if (info) vb_linalg_error(info, "lds: a meanfield factor's precision");
        passes = iter;
        for (int t = 0; t < T; t++)
            logdet += lds[t];
    }
    {
        SEXP dim = PROTECT(Rf_allocVector(INTSXP, 2));
        INTEGER(dim)[0] = d;
        INTEGER(dim)[1] = T;
        Rf_setAttrib(m, R_DimSymbol, dim);
        UNPROTECT(1);
    }
    set_dim3(S, d, d, T);
    set_dim3(Sc, d, d, T);

    const char *nms[] = {"m",    "S",      "Sc",         "logdet",    "D",      "L", "b",
                         "elbo", "loglik", "iterations", "converged", "passes", ""};
    SEXP out = PROTECT(Rf_mkNamed(VECSXP, nms));
    np++;
    SET_VECTOR_ELT(out, 0, m);
    SET_VECTOR_ELT(out, 1, S);
    SET_VECTOR_ELT(out, 2, Sc);
    SET_VECTOR_ELT(out, 3, Rf_ScalarReal(logdet));
    SET_VECTOR_ELT(out, 4, D);
    SET_VECTOR_ELT(out, 5, L);
    SET_VECTOR_ELT(out, 6, b);
    SET_VECTOR_ELT(out, 7, Rf_ScalarReal(elbo));
    SET_VECTOR_ELT(out, 8, Rf_ScalarReal(loglik));
    SET_VECTOR_ELT(out, 9, Rf_ScalarInteger(iter));
    SET_VECTOR_ELT(out, 10, Rf_ScalarLogical(conv));
    SET_VECTOR_ELT(out, 11, Rf_ScalarInteger(passes));
    UNPROTECT(np);
    return out;
}

/*
 * Poisson M-step for (C, d): unit by unit, maximise
 *   f(c, d) = sum_t o_ti [y_ti (c'm_t + d) - exp(off_t + d + c'm_t + c'S_t c / 2)],
 * concave, by Newton with step halving (never decreases f).  The gradient is
 * sum_t [y_t x_t - lam_t u_t], u_t = (m_t + S_t c, 1), and the negative Hessian
 * sum_t lam_t (u_t u_t' + blockdiag(S_t, 0)); both are accumulated in one pass
 * per unit with loops over the tiny latent dimension (a BLAS call per time
 * step would cost more than its d^2 flops).  O(T d^2) per unit and step.
 * y: Ttot x N, off: Ttot, m: d x Ttot, S: d x d x Ttot (trials stacked).
 * control = c(maxit, tol).  Returns list(C, d).
 */
static double pois_unit_obj(int T, int d, const double *y, const double *off, const double *m,
                            const double *S, const double *c, double di) {
    double f = 0.0;
    int dd = d * d;
    for (int t = 0; t < T; t++) {
        if (ISNAN(y[t])) continue;
        const double *mt = m + (size_t)t * d, *St = S + (size_t)t * dd;
        double q = 0.0;
        for (int b = 0; b < d; b++) {
            double s = 0.0;
            for (int a = 0; a < d; a++)
                s += St[a + b * d] * c[a];
            q += s * c[b];
        }
        double e = off[t] + di + dot(d, c, mt);
        f += y[t] * e - exp(e + 0.5 * q);
    }
    return f;
}

SEXP C_lds_poisson_mstep(SEXP y, SEXP off, SEXP m, SEXP S, SEXP C, SEXP dvec, SEXP control) {
    if (TYPEOF(y) != REALSXP || !Rf_isMatrix(y)) Rf_error("lds: 'y' must be a double matrix");
    int T = Rf_nrows(y), N = Rf_ncols(y);
    if (TYPEOF(C) != REALSXP || !Rf_isMatrix(C) || Rf_nrows(C) != N)
        Rf_error("lds: 'C' must be a double matrix with one row per unit");
    int d = Rf_ncols(C), dd = d * d, p = d + 1, np = 0;
    if (d < 1) Rf_error("lds: 'C' has no columns");
    if (TYPEOF(off) != REALSXP || XLENGTH(off) != T) Rf_error("lds: bad 'off'");
    if (TYPEOF(m) != REALSXP || XLENGTH(m) != (R_xlen_t)d * T) Rf_error("lds: bad 'm'");
    if (TYPEOF(S) != REALSXP || XLENGTH(S) != (R_xlen_t)dd * T) Rf_error("lds: bad 'S'");
    if (TYPEOF(dvec) != REALSXP || XLENGTH(dvec) != N) Rf_error("lds: bad 'd'");
    if (TYPEOF(control) != REALSXP || XLENGTH(control) != 2) Rf_error("lds: bad control");
    int maxit = (int)REAL(control)[0];
    double tol = REAL(control)[1];
    SEXP Cn = new_real((R_xlen_t)N * d, &np), dn = new_real(N, &np);
    memcpy(REAL(Cn), REAL(C), (size_t)N * d * sizeof(double));
    memcpy(REAL(dn), REAL(dvec), N * sizeof(double));
    Rf_setAttrib(Cn, R_DimSymbol, Rf_getAttrib(C, R_DimSymbol));
    double *c = (double *)R_alloc(d, sizeof(double)), *cn = (double *)R_alloc(d, sizeof(double)),
           *u = (double *)R_alloc(p, sizeof(double)), *g = (double *)R_alloc(p, sizeof(double)),
           *H = (double *)R_alloc(p * p, sizeof(double));
    const double *Y = REAL(y), *O = REAL(off), *Mm = REAL(m), *SS = REAL(S);
    for (int i = 0; i < N; i++) {
        const double *yi = Y + (size_t)i * T;
        for (int k = 0; k < d; k++)
            c[k] = REAL(Cn)[i + (size_t)k * N];
        double di = REAL(dn)[i];
        double f = pois_unit_obj(T, d, yi, O, Mm, SS, c, di);
        for (int it = 0; it < maxit; it++) {
            memset(g, 0, p * sizeof(double));
            memset(H, 0, p * p * sizeof(double));
            for (int t = 0; t < T; t++) {
                if (ISNAN(yi[t])) continue;
                const double *mt = Mm + (size_t)t * d, *St = SS + (size_t)t * dd;
                double q = 0.0, e = O[t] + di;
                for (int b = 0; b < d; b++) {
                    double s = 0.0;
                    for (int a = 0; a < d; a++)
                        s += St[a + b * d] * c[a];
                    u[b] = s;
                    q += s * c[b];
                    e += c[b] * mt[b];
                }
                double lam = exp(e + 0.5 * q);
                for (int k = 0; k < d; k++)
                    u[k] += mt[k]; /* m_t + S_t c */
                u[d] = 1.0;
                for (int k = 0; k < d; k++)
                    g[k] += yi[t] * mt[k] - lam * u[k];
                g[d] += yi[t] - lam;
                for (int b = 0; b < p; b++) {
                    double lb = lam * u[b];
                    for (int a = 0; a <= b; a++)
                        H[a + b * p] += lb * u[a];
                }
                for (int b = 0; b < d; b++)
                    for (int a = 0; a <= b; a++)
                        H[a + b * p] += lam * St[a + b * d];
                if ((t & 65535) == 65535) R_CheckUserInterrupt();
            }
            int info = vb_chol(p, H, p);
            if (info) break; /* unit without information: leave it */
            vb_chol_solve(p, H, p, g);
            double a = 1.0, fn = f;
            int ok = 0;
            for (int h = 0; h < 40; h++, a *= 0.5) {
                for (int k = 0; k < d; k++)
                    cn[k] = c[k] + a * g[k];
                double dn_ = di + a * g[d];
                fn = pois_unit_obj(T, d, yi, O, Mm, SS, cn, dn_);
                if (R_FINITE(fn) && fn >= f) {
                    memcpy(c, cn, d * sizeof(double));
                    di = dn_;
                    ok = 1;
                    break;
                }
            }
            if (!ok) break;
            double ch = fn - f;
            f = fn;
            if (ch <= tol * (1.0 + fabs(f))) break;
        }
        for (int k = 0; k < d; k++)
            REAL(Cn)[i + (size_t)k * N] = c[k];
        REAL(dn)[i] = di;
    }
    const char *nms[] = {"C", "d", ""};
    SEXP out = PROTECT(Rf_mkNamed(VECSXP, nms));
    np++;
    SET_VECTOR_ELT(out, 0, Cn);
    SET_VECTOR_ELT(out, 1, dn);
    UNPROTECT(np);
    return out;
}
