/*
 * mlp.c — a multilayer perceptron on R's BLAS, the inference network of
 * vb_amortized() (amortized.c).
 *
 * Model: L affine layers; layer l maps size[l] inputs to size[l+1] outputs,
 *   h_{l+1} = act(W_l h_l + b_l)   (l < L - 1),   out = W_{L-1} h_{L-1} + b_{L-1},
 * with act = tanh, relu or softplus.  L = 1 is an affine (linear) map.
 * Parameters are one flat vector, layer by layer: W_l (size[l+1] x size[l],
 * column-major), then b_l (size[l+1]).
 *
 * Forward: a minibatch of B inputs (columns of X, size[0] x B, or rows of
 * X, B x size[0], so a trials x units matrix needs no transpose) is pushed
 * through with one dgemm per layer; the hidden activations are kept in `acts`
 * (sum_{l=1}^{L-1} size[l] * B doubles) for the backward pass.
 * Backward: given dF/dout (size[L] x B), accumulates dF/dtheta (+=) by
 * back-propagation, two dgemm per layer; the derivative of each activation
 * is written in terms of its output a (tanh' = 1 - a^2, relu' = [a > 0],
 * softplus' = sigmoid = 1 - exp(-a)), so no pre-activations are stored.
 * scratch: 2 * max(size) * B doubles.  Cost 2 B sum_l size[l] size[l+1]
 * flops forward, twice that backward.  Workers only: no R API.
 */
#include "mlp.h"
#include "vbayes.h"

size_t vb_mlp_nparam(int L, const int *size) {
    size_t P = 0;
    for (int l = 0; l < L; l++)
        P += (size_t)size[l + 1] * size[l] + size[l + 1];
    return P;
}

size_t vb_mlp_nacts(int L, const int *size, int B) {
    size_t s = 0;
    for (int l = 1; l < L; l++)
        s += (size_t)size[l] * B;
    return s;
}

int vb_mlp_maxwidth(int L, const int *size) {
    int w = 1;
    for (int l = 0; l <= L; l++)
        if (size[l] > w) w = size[l];
    return w;
}

/*
 * tanh through one exp (glibc's tanh goes through expm1, about three times
 * slower, and the forward pass spends most of its non-BLAS time here):
 * tanh|x| = (1 - t) / (1 + t), t = exp(-2|x|), relative error below 1e-14
 * for |x| >= 0.02; below that the Taylor series to x^9 (error < x^11).
 */
static inline double fast_tanh(double x) {
    double a = fabs(x), r;
    if (a < 0.02) {
        double x2 = x * x;
        return x * (1 + x2 * (-1.0 / 3 + x2 * (2.0 / 15 + x2 * (-17.0 / 315 + x2 * 62.0 / 2835))));
    }
    if (a > 20) return x > 0 ? 1 : -1;
    double t = exp(-2 * a);
    r = (1 - t) / (1 + t);
    return x > 0 ? r : -r;
}

/* the activation over a whole layer, one loop per kind (no switch per element) */
static void activate(int act, double *x, size_t len) {
    switch (act) {
    case VB_ACT_TANH:
        for (size_t k = 0; k < len; k++)
            x[k] = fast_tanh(x[k]);
        break;
    case VB_ACT_RELU:
        for (size_t k = 0; k < len; k++)
            x[k] = x[k] > 0 ? x[k] : 0;
        break;
    default:
        for (size_t k = 0; k < len; k++)
            x[k] = vb_softplus(x[k]);
    }
}

static double dactivate(int act, double a) {
    switch (act) {
    case VB_ACT_TANH:
        return 1 - a * a;
    case VB_ACT_RELU:
        return a > 0 ? 1 : 0;
    default:
        return -expm1(-a);
    }
}

void vb_mlp_forward(const vb_mlp *net, const double *theta, int B, const double *X, int ldx,
                    int xtrans, double *acts, double *out, int ldout) {
    double one = 1.0;
    const double *in = X, *par = theta;
    int ldin = ldx;
    double *a = acts;
    for (int l = 0; l < net->L; l++) {
        int ni = net->size[l], no = net->size[l + 1];
        const double *W = par, *b = par + (size_t)no * ni;
        double *dst = l == net->L - 1 ? out : a;
        int ldd = l == net->L - 1 ? ldout : no;
        for (int i = 0; i < B; i++)
            memcpy(dst + (size_t)i * ldd, b, sizeof(double) * no);
        const char *tb = l == 0 && xtrans ? "T" : "N";
        if (ni > 0) F77_CALL(dgemm)
        ("N", tb, &no, &B, &ni, &one, W, &no, in, &ldin, &one, dst, &ldd FCONE FCONE);
        if (l < net->L - 1) {
            size_t len = (size_t)no * B;
            activate(net->act, dst, len);
            in = dst;
            ldin = no;
            a += len;
        }
        par += (size_t)no * ni + no;
    }
}

void vb_mlp_backward(const vb_mlp *net, const double *theta, int B, const double *X,
                     const double *acts, const double *dout, int lddout, double *grad,
                     double *scratch) {
    double one = 1.0, zero = 0.0;
    int L = net->L, wmax = vb_mlp_maxwidth(L, net->size);
    /* offsets of each layer's parameters and activations */
    size_t poff[VB_MLP_MAXL + 1], aoff[VB_MLP_MAXL + 1];
    poff[0] = 0;
    aoff[1] = 0;
    for (int l = 0; l < L; l++)
        poff[l + 1] = poff[l] + (size_t)net->size[l + 1] * net->size[l] + net->size[l + 1];
    for (int l = 1; l < L; l++)
        aoff[l + 1] = aoff[l] + (size_t)net->size[l] * B;
    double *delta = scratch, *prev = scratch + (size_t)wmax * B;
    const double *dl = dout;
    int ldl = lddout;
    for (int l = L - 1; l >= 0; l--) {
        int ni = net->size[l], no = net->size[l + 1];
        const double *W = theta + poff[l];
        double *gW = grad + poff[l], *gb = gW + (size_t)no * ni;
        const double *in = l == 0 ? X : acts + aoff[l];
        int ldin = l == 0 ? net->size[0] : ni;
        if (ni > 0) F77_CALL(dgemm)
        ("N", "T", &no, &ni, &B, &one, dl, &ldl, in, &ldin, &one, gW, &no FCONE FCONE);
        for (int i = 0; i < B; i++)
            for (int k = 0; k < no; k++)
                gb[k] += dl[k + (size_t)i * ldl];
        if (l == 0) break;
        /* delta_{l-1} = (W_l' delta_l) * act'(h_l) */
        F77_CALL(dgemm)
        ("T", "N", &ni, &B, &no, &one, W, &no, dl, &ldl, &zero, prev, &ni FCONE FCONE);
        size_t len = (size_t)ni * B;
        for (size_t k = 0; k < len; k++)
            prev[k] *= dactivate(net->act, in[k]);
        double *t = delta;
        delta = prev;
        prev = t;
        dl = delta;
        ldl = ni;
    }
}
