/*
 * expect.c — the Gaussian-family toolkit: f(m, v) = E log p(y | eta) under
 * eta ~ N(m, v) for each observation family, with df/dm and df/dv, the
 * quantities every Gaussian variational engine (GLM CAVI, latent dynamics,
 * hierarchical GLMs) is built on.  Terms free of eta are left to the caller.
 *
 *   gaussian (precision tau, weight w): 1/2 (E log tau - E tau w ((y - m)^2 + v))
 *   poisson  (log link, weight w):      w (y m - exp(m + v/2))       (E e^eta exact)
 *   binomial (logit, y of w trials):    y m - w E softplus(eta)      (Gauss-Hermite)
 *
 * For the binomial, E softplus, E sigmoid and E sigmoid' (d/dv by Price's
 * identity, d/dv E g = 1/2 E g'') are taken in four regimes of v = var(eta):
 * v <= 0.034 (sd 0.185, where most observations of a real fit are): a moment
 * expansion with a proven remainder below 1e-14 (binom_taylor), one exp and
 * one log per observation; 0.034 < v <= 0.238: the fewest Gauss-Hermite
 * nodes (10 to 24) that meet the same bound; 0.238 < v <= 1: a k-node rule (x, wt) for
 * N(0, 1/2) scaled so that the weights sum to one, E g(eta) = sum wt_k
 * g(m + sqrt(2 v) x_k) (32 nodes: error below 1e-12), one exp and one log
 * per node; v > 1: see the wide-q rule below.  Cost O(1) (gaussian, poisson,
 * narrow binomial), O(k) otherwise.
 */
#include "vbayes.h"

double vb_egauss(double y, double w, double Etau, double Elogtau, double m, double v, double *dm,
                 double *dv) {
    double r = y - m;
    *dm = Etau * w * r;
    *dv = -0.5 * Etau * w;
    return 0.5 * (Elogtau - Etau * w * (r * r + v));
}

double vb_epois(double y, double w, double m, double v, double *dm, double *dv) {
    double lam = exp(m + 0.5 * v);
    *dm = w * (y - lam);
    *dv = -0.5 * w * lam;
    return w * (y * m - lam);
}

/*
 * Wide q (sd > 1): a fixed Gauss-Hermite rule misses the kink of softplus at
 * 0 (32 nodes are 1e-2 off at sd 10 and 10 nats off at sd 2000, where
 * separated data put q).  Split each function into its piecewise-linear part,
 * whose expectation is closed form, and a bump b(x) that decays as e^-|x|:
 *   softplus(x) = max(x, 0) + log1p(e^-|x|),  E max(eta, 0) = m Phi(m/s) + s phi(m/s)
 *   sigmoid(x)  = 1{x > 0} - sign(x) sigmoid(-|x|),  P(eta > 0) = Phi(m/s)
 *   sigmoid'(x) = sigmoid(x) sigmoid(-x)  (a bump already)
 * and integrate the bumps against the N(m, s^2) density in x: Gauss-Legendre
 * panels on [-38, 38] split at the kink (beyond 38, e^-x < 4e-17).  The bump
 * values at the nodes are fixed, so only the density varies.  Relative error
 * below 1e-11 for sd >= 1 against adaptive quadrature.  Cost 2 * 7 * 10
 * exp() per observation, only where sd > 1.
 */
#define XS_PANELS 7
#define XS_NODES 10
#define XS_N (2 * XS_PANELS * XS_NODES)
static const double xs_breaks[XS_PANELS + 1] = {0, 1, 2.5, 5, 9, 15, 24, 38};
static double xs_x[XS_N], xs_w[XS_N], xs_r[XS_N], xs_rho[XS_N], xs_b[XS_N];
static int xs_ready = 0;

/* Gauss-Legendre nodes and weights on [-1, 1] by Newton's method on P_n. */
static void gauss_legendre(int n, double *x, double *w) {
    for (int i = 0; i < n; i++) {
        double z = cos(M_PI * (i + 0.75) / (n + 0.5)), dp = 1;
        for (int it = 0; it < 100; it++) {
            double p0 = 1, p1 = z;
            for (int k = 2; k <= n; k++) {
                double p2 = ((2 * k - 1) * z * p1 - (k - 1) * p0) / k;
                p0 = p1;
                p1 = p2;
            }
            dp = n * (z * p1 - p0) / (z * z - 1);
            double dz = p1 / dp;
            z -= dz;
            if (fabs(dz) < 1e-16) break;
        }
        x[i] = z;
        w[i] = 2.0 / ((1 - z * z) * dp * dp);
    }
}

static void xs_setup(void) {
    double gx[XS_NODES], gw[XS_NODES];
    gauss_legendre(XS_NODES, gx, gw);
    int k = 0;
    for (int side = -1; side <= 1; side += 2)
        for (int p = 0; p < XS_PANELS; p++) {
            double a = xs_breaks[p], b = xs_breaks[p + 1];
            for (int i = 0; i < XS_NODES; i++, k++) {
                double u = 0.5 * (a + b) + 0.5 * (b - a) * gx[i], e = exp(-u);
                xs_x[k] = side * u;
                xs_w[k] = 0.5 * (b - a) * gw[i];
                xs_r[k] = log1p(e);
                xs_rho[k] = -side * e / (1 + e);
                xs_b[k] = e / ((1 + e) * (1 + e));
            }
        }
    xs_ready = 1;
}

/*
 * Narrow q (v <= TY_VMAX[TY_KMAX]: most observations of a fit to more than a
 * few hundred rows): the Gaussian moment expansion
 *   E g(m + sqrt(v) Z) = sum_{k=0..K} v^k / (2^k k!) g^(2k)(m) + R_K,
 *   |R_K| <= sup|g^(2K+2)| v^(K+1) / (2^(K+1) (K+1)!)
 * (Taylor's theorem with the Lagrange remainder; odd moments of Z vanish and
 * E Z^(2K+2) / (2K+2)! = 1 / (2^(K+1) (K+1)!)), for g = softplus, sigmoid and
 * sigmoid'.  The Taylor coefficients a_j = sigma^(j)(m) / j! follow from
 * sigma' = sigma (1 - sigma): (j+1) a_{j+1} = a_j - sum_{i=0..j} a_i a_{j-i},
 * started at the tail value a_0 = sigmoid(-|m|) (no cancellation) and
 * reflected by sigma(x) = 1 - sigma(-x).  In these terms
 *   E sigmoid = a_0 + sum_k (2k-1)!! v^k a_2k,  E sigmoid' = sum_k (2k+1)!! v^k a_(2k+1),
 *   E softplus = softplus(m) + sum_k (2k-1)!! v^k a_(2k-1) / (2k).
 * TY_VMAX[K] is the largest v at which the remainder of all three expansions
 * is below 1e-14 (absolute, per trial), from sup|sigma^(j)| measured on a
 * grid of 4e5 points (e.g. sup|sigma^(13)| = 1365, sup|sigma^(17)| = 8.0e5);
 * K is the smallest order that meets it.  Cost: one exp and one log per
 * observation plus O(K^2) flops, against k_nodes exp/log pairs for the
 * Gauss-Hermite rule it replaces.
 */
#define TY_KMAX 8
static const double TY_VMAX[TY_KMAX + 1] = {0,           5.65685e-07, 7.6731e-05,
                                            8.38991e-04, 3.38523e-03, 8.34417e-03,
                                            1.55725e-02, 2.44791e-02, 3.43726e-02};

/*
 * The order-K sums above from a_0 = sigmoid(-|m|) (sg = -1 reflects the even
 * coefficients for m > 0): the recurrence for a_1 .. a_(2K+1) (each
 * convolution summed over half its terms), then the three sums by Horner's
 * rule in v with the constants of TY_CA, TY_CB, TY_CC.  Cost (K + 1)^2 + 6K
 * flops.
 */
#define TY_NA (2 * TY_KMAX + 2)
static const double TY_CA[TY_KMAX + 1] = {0,    0.5,    0.75,   2.5,        13.125,
                                          94.5, 866.25, 9652.5, 126689.0625}; /* (2k-1)!! / (2k) */
static const double TY_CB[TY_KMAX + 1] = {1,   1,     3,      15,     105,
                                          945, 10395, 135135, 2027025}; /* (2k-1)!! */
static const double TY_CC[TY_KMAX + 1] = {1,     3,      15,      105,     945,
                                          10395, 135135, 2027025, 34459425}; /* (2k+1)!! */

static const double TY_INV[TY_NA] = {1.0,      1.0 / 2,  1.0 / 3,  1.0 / 4,  1.0 / 5,  1.0 / 6,
                                     1.0 / 7,  1.0 / 8,  1.0 / 9,  1.0 / 10, 1.0 / 11, 1.0 / 12,
                                     1.0 / 13, 1.0 / 14, 1.0 / 15, 1.0 / 16, 1.0 / 17, 1.0 / 18};

#if defined(__GNUC__)
#define VB_INLINE static inline __attribute__((always_inline))
#else
#define VB_INLINE static inline
#endif

/* inlined at each constant K below, so the compiler unrolls both loops */
VB_INLINE void ty_series(int K, double a0, double sg, double v, double *A, double *B, double *C) {
    double a[TY_NA];
    int na = 2 * K + 2;
    a[0] = a0;
#pragma GCC unroll 18
    for (int j = 0; j + 1 < na; j++) {
        double c = 0;
#pragma GCC unroll 9
        for (int i = 0; i < (j + 1) / 2; i++)
            c += a[i] * a[j - i];
        c *= 2;
        if (j % 2 == 0) c += a[j / 2] * a[j / 2];
        a[j + 1] = (a[j] - c) * TY_INV[j];
    }
    double sa = 0, sb = 0, sc = 0;
#pragma GCC unroll 8
    for (int k = K; k >= 1; k--) {
        sa = sa * v + TY_CA[k] * a[2 * k - 1];
        sb = sb * v + TY_CB[k] * a[2 * k];
        sc = sc * v + TY_CC[k] * a[2 * k + 1];
    }
    *A = v * sa;
    *B = sg * v * sb;
    *C = a[1] + v * sc;
}

/* Moments by the expansion; v <= TY_VMAX[TY_KMAX]. */
static void binom_taylor(double m, double v, double *sp, double *s1, double *s2) {
    double e = exp(-fabs(m)), r = 1.0 / (1.0 + e), a0 = e * r, sg = m > 0 ? -1.0 : 1.0, A, B, C;
    int K = 1;
    while (v > TY_VMAX[K])
        K++;
    switch (K) { /* a constant order per case: straight-line code */
    case 1:
        ty_series(1, a0, sg, v, &A, &B, &C);
        break;
    case 2:
        ty_series(2, a0, sg, v, &A, &B, &C);
        break;
    case 3:
        ty_series(3, a0, sg, v, &A, &B, &C);
        break;
    case 4:
        ty_series(4, a0, sg, v, &A, &B, &C);
        break;
    case 5:
        ty_series(5, a0, sg, v, &A, &B, &C);
        break;
    case 6:
        ty_series(6, a0, sg, v, &A, &B, &C);
        break;
    case 7:
        ty_series(7, a0, sg, v, &A, &B, &C);
        break;
    default:
        ty_series(8, a0, sg, v, &A, &B, &C);
    }
    if (sp) *sp = (m > 0 ? m : 0) + log(1.0 + e) + A; /* log(1 + e): abs. error 2e-16 */
    *s1 = (m > 0 ? r : a0) + B;
    *s2 = C;
}

/*
 * Moderate q (TY_VMAX[TY_KMAX] < v <= 0.238): the fewest Gauss-Hermite nodes
 * whose error bound meets 1e-14.  An n-node rule for E f(Z), Z ~ N(0, 1), is
 * exact to degree 2n - 1 with error n! v^n g^(2n)(xi) / (2n)! for
 * g(m + sqrt(v) Z), so GH_VMAX[i] = (1e-14 (2n)! / (n! M))^(1/n) with M the
 * largest of sup|sigma^(2n-1..2n+1)| (1.1 x the asymptote 2 j! / pi^(j+1),
 * which the measured sups up to j = 27 stay below).  Beyond 0.238 the
 * caller's rule (32 nodes by default; 1e-12 there) is used.  The rules are
 * built once by Golub-Welsch (LAPACK dstev on the Jacobi matrix of N(0, 1/2)).
 */
#define GH_NRULES 5
static const int GH_N[GH_NRULES] = {10, 12, 16, 20, 24};
static const double GH_VMAX[GH_NRULES] = {0.0743514, 0.110179, 0.170843, 0.212299, 0.23787};
static double gh_x[GH_NRULES][24], gh_w[GH_NRULES][24];
static int gh_ready = 0; /* 1 built, -1 LAPACK failed (then the caller's rule is used) */

static void gh_setup(void) {
    gh_ready = 1;
    for (int r = 0; r < GH_NRULES; r++) {
        int n = GH_N[r], info = 0;
        double d[24], e[24], z[24 * 24], work[48];
        for (int i = 0; i < n; i++) {
            d[i] = 0;
            e[i] = i + 1 < n ? sqrt(0.5 * (i + 1)) : 0;
        }
        F77_CALL(dstev)("V", &n, d, e, z, &n, work, &info FCONE);
        if (info != 0) {
            gh_ready = -1;
            return;
        }
        for (int i = 0; i < n; i++) {
            gh_x[r][i] = d[i];
            gh_w[r][i] = z[(size_t)i * n] * z[(size_t)i * n];
        }
    }
}

/* E softplus (when sp != NULL), E sigmoid and E sigmoid' under N(m, v). */
static void binom_moments(double m, double v, int k, const double *x, const double *wt, double *sp,
                          double *s1, double *s2) {
    double a = 0, b = 0, c = 0, sd = sqrt(v);
    if (v <= TY_VMAX[TY_KMAX]) {
        binom_taylor(m, v, sp, s1, s2);
        return;
    }
    if (v <= GH_VMAX[GH_NRULES - 1]) {
        if (!gh_ready) gh_setup();
        if (gh_ready == 1) {
            int r = 0;
            while (v > GH_VMAX[r])
                r++;
            k = GH_N[r];
            x = gh_x[r];
            wt = gh_w[r];
        }
    }
    if (sd <= 1.0) {
        /* one exp (and one log for the value) per node */
        for (int i = 0; i < k; i++) {
            double u = m + M_SQRT2 * sd * x[i], e = exp(-fabs(u)), r = 1.0 / (1.0 + e),
                   s = u > 0 ? r : e * r;
            if (sp) a += wt[i] * (fmax(u, 0) + log(1.0 + e)); /* abs. error 2e-16 */
            b += wt[i] * s;
            c += wt[i] * e * r * r;
        }
    } else {
        if (!xs_ready) xs_setup();
        double z = m / sd, Phi = pnorm(z, 0, 1, 1, 0);
        a = m * Phi + sd * dnorm(z, 0, 1, 0);
        b = Phi;
        for (int i = 0; i < XS_N; i++) {
            double u = (xs_x[i] - m) / sd, dens = xs_w[i] * exp(-0.5 * u * u) * M_1_SQRT_2PI / sd;
            a += xs_r[i] * dens;
            b += xs_rho[i] * dens;
            c += xs_b[i] * dens;
        }
    }
    if (sp) *sp = a;
    *s1 = b;
    *s2 = c;
}

double vb_ebinom(double y, double w, double m, double v, int k, const double *x, const double *wt,
                 double *dm, double *dv) {
    double sp, s1, s2;
    binom_moments(m, v, k, x, wt, &sp, &s1, &s2);
    *dm = y - w * s1;
    *dv = -0.5 * w * s2;
    return y * m - w * sp;
}

/*
 * vb_ebinom over n observations, sum_t f_t returned, derivatives into dm, dv
 * (either may be NULL).  The narrow-q expansion is latency-bound (each
 * Taylor coefficient waits for the previous ones), so it runs on VB_LANES
 * observations side by side at the largest order any of them needs (a higher
 * order only shrinks the remainder); the others (w = 0, wider q) one by one.
 */
#define VB_LANES 8
static double ebinom_lanes(int L, const int *idx, const double *y, const double *w, const double *m,
                           const double *v, double *dm, double *dv) {
    double a[TY_NA][VB_LANES], vl[VB_LANES], e[VB_LANES], sg[VB_LANES], A[VB_LANES], B[VB_LANES],
        C[VB_LANES], F = 0;
    int K = 1;
    for (int l = 0; l < VB_LANES; l++) {
        double ml = l < L ? m[idx[l]] : 0;
        vl[l] = l < L ? v[idx[l]] : 0;
        while (vl[l] > TY_VMAX[K])
            K++;
        e[l] = exp(-fabs(ml));
        a[0][l] = e[l] / (1.0 + e[l]);
        sg[l] = ml > 0 ? -1.0 : 1.0;
    }
    int na = 2 * K + 2;
    for (int j = 0; j + 1 < na; j++) { /* innermost loops over the lanes */
        double c[VB_LANES] = {0};
        for (int i = 0; i < (j + 1) / 2; i++)
            for (int l = 0; l < VB_LANES; l++)
                c[l] += a[i][l] * a[j - i][l];
        for (int l = 0; l < VB_LANES; l++) {
            double cl = 2 * c[l];
            if (j % 2 == 0) cl += a[j / 2][l] * a[j / 2][l];
            a[j + 1][l] = (a[j][l] - cl) * TY_INV[j];
        }
    }
    for (int l = 0; l < VB_LANES; l++)
        A[l] = B[l] = C[l] = 0;
    for (int k = K; k >= 1; k--)
        for (int l = 0; l < VB_LANES; l++) {
            A[l] = A[l] * vl[l] + TY_CA[k] * a[2 * k - 1][l];
            B[l] = B[l] * vl[l] + TY_CB[k] * a[2 * k][l];
            C[l] = C[l] * vl[l] + TY_CC[k] * a[2 * k + 1][l];
        }
    for (int l = 0; l < L; l++) {
        int t = idx[l];
        double mt = m[t], r = 1.0 / (1.0 + e[l]);
        double sp = (mt > 0 ? mt : 0) + log(1.0 + e[l]) + vl[l] * A[l]; /* as binom_taylor */
        double s1 = (mt > 0 ? r : a[0][l]) + sg[l] * vl[l] * B[l], s2 = a[1][l] + vl[l] * C[l];
        if (dm) dm[t] = y[t] - w[t] * s1;
        if (dv) dv[t] = -0.5 * w[t] * s2;
        F += y[t] * mt - w[t] * sp;
    }
    return F;
}

double vb_ebinom_n(int n, const double *y, const double *w, const double *m, const double *v, int k,
                   const double *x, const double *wt, double *dm, double *dv) {
    int idx[VB_LANES], L = 0;
    double F = 0, a, b;
    for (int t = 0; t < n; t++) {
        if (w[t] == 0) {
            if (dm) dm[t] = 0;
            if (dv) dv[t] = 0;
        } else if (v[t] <= TY_VMAX[TY_KMAX]) {
            idx[L++] = t;
            if (L == VB_LANES) {
                F += ebinom_lanes(L, idx, y, w, m, v, dm, dv);
                L = 0;
            }
        } else
            F += vb_ebinom(y[t], w[t], m[t], v[t], k, x, wt, dm ? dm + t : &a, dv ? dv + t : &b);
    }
    if (L) F += ebinom_lanes(L, idx, y, w, m, v, dm, dv);
    return F;
}
