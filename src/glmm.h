/*
 * glmm.h — the hierarchical GLM shared by glmm_model.c (model, covariance
 * factors, ELBO terms) and glmm_cavi.c (the Gaussian q(beta, b) updates).
 *
 * theta = (beta (p), then for each grouping factor j its groups g = 0..G_j-1,
 * each a block of d_j random effects) has length D = p + sum_j G_j d_j.
 * Observation i touches beta and, in factor j, the block of its group
 * g_j(i) with row values Z_j[i, ].  A factor's d_j columns are split into
 * covariance blocks (terms of the formula: one for (1 + x | g), two for
 * (x || g)), each with its own Sigma_c and prior.
 */
#ifndef VBAYES_GLMM_H
#define VBAYES_GLMM_H
#include "vbayes.h"

enum { GLMM_FULLRANK = 0, GLMM_PARTIAL = 1, GLMM_BLOCK = 2, GLMM_MEANFIELD = 3 };
enum { GLMM_HW = 0, GLMM_IW = 1, GLMM_FIXED = 2 };

typedef struct {
    int d, G, off;     /* dims, groups, position of group 0 in theta */
    const int *grp;    /* n: group of each observation, 0-based      */
    const double *Z;   /* n x d                                      */
    int *ord, *gstart; /* observations sorted by group; G + 1 starts */
    double *Om;        /* d x d: E Sigma^{-1} (block diagonal over its covs) */
    double Elogdet;    /* sum over its covs of E log|Sigma_c|        */
    double *E;         /* d x d: sum_g E b_g b_g'                    */
} glmm_factor;

typedef struct {
    int factor, start, d, type;
    double nu;           /* huang_wand nu, inv_wishart df               */
    const double *scale; /* HW: d scales A_k; IW: d x d Psi; fixed: Sigma */
    double mq, *Psiq;    /* q(Sigma) = IW(mq, Psiq)                     */
    double *aA, *aB;     /* q(a_k) = IG(aA_k, aB_k) (huang_wand)        */
    double *fixOm;       /* fixed: Sigma^{-1}; fixlogdet = log|Sigma|   */
    double fixlogdet;
} glmm_cov;

typedef struct {
    vb_glm *M;
    int J, ncov, D, approx, fix_tau;
    glmm_factor *F;
    glmm_cov *C;
} glmm_model;

void glmm_unpack(SEXP model, vb_glm *M, glmm_model *G);
/* q(Sigma_c), q(a_c) given the factors' E (closed-form CAVI); fills Om, Elogdet */
int glmm_cov_update(glmm_model *G);
/* Om, Elogdet from the current q(Sigma_c) without updating it */
int glmm_cov_moments(glmm_model *G);
/* E log p(Sigma, a) - E log q(Sigma, a), summed over covariance blocks */
double glmm_cov_terms(const glmm_model *G);
/* sum_j sum_g E log p(b_g | Sigma_j) from the factors' E, Om, Elogdet */
double glmm_re_prior(const glmm_model *G);
/* log multivariate gamma */
double glmm_lmvgamma(int d, double x);

#endif
