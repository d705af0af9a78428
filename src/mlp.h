/* mlp.h — the multilayer perceptron of mlp.c (used by amortized.c). */
#ifndef VB_MLP_H
#define VB_MLP_H
#include <stddef.h>

enum { VB_ACT_TANH = 0, VB_ACT_RELU = 1, VB_ACT_SOFTPLUS = 2 };
#define VB_MLP_MAXL 64 /* at most 63 hidden layers */

typedef struct {
    int L;           /* affine layers (hidden layers + 1)          */
    const int *size; /* L + 1 widths: size[0] inputs, size[L] outputs */
    int act;         /* VB_ACT_*, after every layer but the last     */
} vb_mlp;

size_t vb_mlp_nparam(int L, const int *size);
size_t vb_mlp_nacts(int L, const int *size, int B);
int vb_mlp_maxwidth(int L, const int *size);
/* X: size[0] x B (ld ldx), or B x size[0] (ld ldx) when xtrans */
void vb_mlp_forward(const vb_mlp *net, const double *theta, int B, const double *X, int ldx,
                    int xtrans, double *acts, double *out, int ldout);
void vb_mlp_backward(const vb_mlp *net, const double *theta, int B, const double *X,
                     const double *acts, const double *dout, int lddout, double *grad,
                     double *scratch);
#endif
