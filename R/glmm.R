# Hierarchical GLMs: vb() with lme4 bar terms, y ~ x + (1 + x | g).  The
# formula is parsed with reformulas (findbars, nobars, subbars); the engine is
# src/glmm_cavi.c (Gaussian q(beta, b)) with src/glmm_model.c (q(Sigma), q(a)).
# Fits have class c("vbglmm", "vb_posterior").

#' Priors on random-effect covariance matrices
#'
#' `huang_wand(nu, scale)` is the Huang-Wand prior (the default): for each
#' random-effect dimension k, a_k ~ InvGamma(1/2, 1/scale_k^2) and
#' Sigma | a ~ InvWishart(nu + d - 1, 2 nu diag(1/a)).  Marginally each
#' standard deviation is half-t with `nu` degrees of freedom and scale
#' `scale_k`, and for `nu = 2` every correlation is uniform on (-1, 1).
#' `inv_wishart(df, scale)` is the inverse-Wishart prior Sigma ~
#' InvWishart(df, Psi), with density proportional to
#' |Sigma|^-(df + d + 1)/2 exp(-tr(Psi Sigma^-1)/2).
#'
#' @param nu Degrees of freedom of the half-t on each standard deviation (> 0).
#' @param scale `huang_wand()`: scale of each half-t, one number (recycled) or
#'   one per random-effect dimension of a term; `NULL` (the default) scales
#'   to the data: sd(y) / sd(z_k) for gaussian models (sd(y) for constant
#'   columns such as the intercept), 1 / sd(z_k) or 1 otherwise.
#'   `inv_wishart()`: the scale matrix Psi, or a vector s giving
#'   Psi = diag(s^2); `NULL` means Psi = identity times the same data scale
#'   squared.
#' @param df Degrees of freedom of the inverse Wishart (> d - 1); `NULL`
#'   means d + 1 for each term.
#' @return A prior object of class `vb_covariance_prior` for
#'   `vb(prior_covariance = )`.
#' @examples
#' huang_wand()
#' inv_wishart(df = 3, scale = c(1, 0.5))
#' @export
huang_wand <- function(nu = 2, scale = NULL) {
  if (!is.numeric(nu) || length(nu) != 1L || !is.finite(nu) || nu <= 0 || nu > 1e6)
    stop("huang_wand(): 'nu' must be a single positive number (degrees of freedom of the half-t).", call. = FALSE)
  if (!is.null(scale) && (!is.numeric(scale) || !length(scale) || any(!representable_scale(scale)) || any(scale <= 0)))
    stop("huang_wand(): 'scale' must be positive finite numbers, one or one per random-effect dimension.", call. = FALSE)
  structure(list(dist = "huang_wand", nu = as.numeric(nu), scale = if (!is.null(scale)) as.numeric(scale)),
            class = "vb_covariance_prior")
}

#' @rdname huang_wand
#' @export
inv_wishart <- function(df = NULL, scale = NULL) {
  if (!is.null(df) && (!is.numeric(df) || length(df) != 1L || !is.finite(df) || df <= 0 || df > 1e8))
    stop("inv_wishart(): 'df' must be a single positive number.", call. = FALSE)
  if (!is.null(scale)) {
    if (!is.numeric(scale) || !length(scale) || any(!is.finite(scale)))
      stop("inv_wishart(): 'scale' must be a numeric scale matrix or a vector of positive scales.", call. = FALSE)
    if (is.matrix(scale)) {
      if (nrow(scale) != ncol(scale) || !isSymmetric(unname(scale)) ||
          inherits(tryCatch(chol(scale), error = function(e) e), "error"))
        stop("inv_wishart(): a 'scale' matrix must be symmetric positive definite.", call. = FALSE)
    } else if (any(scale <= 0) || any(!representable_scale(scale)))
      stop("inv_wishart(): a 'scale' vector must hold positive finite scales.", call. = FALSE)
  }
  structure(list(dist = "inv_wishart", df = if (!is.null(df)) as.numeric(df), scale = scale),
            class = "vb_covariance_prior")
}

#' @export
print.vb_covariance_prior <- function(x, ...) {
  sc <- if (is.null(x$scale)) "from the data" else paste(format(signif(x$scale, 4)), collapse = ", ")
  if (x$dist == "huang_wand")
    cat(sprintf("huang_wand(nu = %g, scale = %s) on random-effect covariances\n", x$nu, sc))
  else cat(sprintf("inv_wishart(df = %s, scale = %s) on random-effect covariances\n",
                   if (is.null(x$df)) "d + 1" else format(x$df), sc))
  invisible(x)
}

# An internal prior that fixes Sigma (for tests against exact evidences).
fixed_covariance <- function(Sigma) structure(list(dist = "fixed", Sigma = Sigma), class = "vb_covariance_prior")

has_bars <- function(formula) length(reformulas::findbars(formula)) > 0L

approx_codes <- c(fullrank = 0L, partial = 1L, block = 2L, meanfield = 3L)

# The front end behind vb() for formulas with bars.  `mc` is vb()'s call.
vb_glmm <- function(mc, formula, data, family, prior, prior_intercept, prior_precision,
                    prior_covariance, approx, control, x, y, contrasts, missing_prior,
                    missing_intercept, env, fix_tau = NULL) {
  t0 <- proc.time()[["elapsed"]]
  family <- check_family(family)
  control <- as_vb_control(control)
  if (is.null(prior_covariance)) prior_covariance <- huang_wand()
  if (!inherits(prior_covariance, "vb_covariance_prior"))
    stop("vb(): 'prior_covariance' must be huang_wand(nu, scale) or inv_wishart(df, scale).", call. = FALSE)
  approx <- if (is.null(approx)) "partial" else approx
  if (!is.character(approx) || length(approx) != 1L || !approx %in% names(approx_codes))
    stop("vb(): for a model with random effects 'approx' must be one of \"partial\", \"block\", \"meanfield\" or \"fullrank\".", call. = FALSE)
  if (!is.null(mc$method) && !identical(eval(mc$method, env), "cavi"))
    stop("vb(): models with random effects are fitted by method = \"cavi\".", call. = FALSE)
  bars <- reformulas::findbars(formula)
  fixed <- reformulas::nobars(formula)
  if (is.null(fixed) || length(fixed) < 3L)
    stop("vb(): the formula has no response.", call. = FALSE)

  # the model frame over every variable, fixed and grouping (na.action applies to all)
  mf <- mc
  m <- match(c("formula", "data", "subset", "weights", "na.action", "offset", "exposure"), names(mf), 0L)
  mf <- mf[c(1L, m)]
  mf$formula <- reformulas::subbars(formula)
  mf$drop.unused.levels <- TRUE
  mf[[1L]] <- quote(stats::model.frame)
  expo_scalar <- NULL
  if (!is.null(mf$exposure)) {
    ev <- eval(mf$exposure, data, env)
    if (length(ev) == 1L) { expo_scalar <- ev; mf$exposure <- NULL }
  }
  mf$data <- data
  mf <- eval(mf, env)
  if (nrow(mf) == 0L) stop("vb(): the model frame has no rows (after subset and na.action).", call. = FALSE)
  mt <- stats::terms(fixed, data = mf)
  yr <- model.response(mf, "any")
  X <- model.matrix(mt, mf, contrasts)
  n <- nrow(X)
  w <- as.vector(model.weights(mf))
  if (!is.null(w) && (!is.numeric(w) || any(!is.finite(w)) || any(w < 0)))
    stop("vb(): 'weights' must be finite and non-negative.", call. = FALSE)
  off <- as.vector(model.offset(mf))
  expo <- if (!is.null(expo_scalar)) expo_scalar else model.extract(mf, "exposure")
  if (!is.null(expo)) {
    if (family$family != "poisson")
      stop("vb(): 'exposure' is for poisson() models (bin width or exposure time); use 'offset' otherwise.", call. = FALSE)
    if (!is.numeric(expo) || any(!is.finite(expo)) || any(expo <= 0))
      stop("vb(): 'exposure' must be finite and positive (a bin width or exposure time).", call. = FALSE)
    expo <- rep_len(as.numeric(expo), n)
  }
  resp <- family_response(yr, w, family, n)
  d <- check_glm_data(X, resp$y, family, resp$weights, off, expo)
  X <- d$X

  re <- glmm_terms(bars, mf, env, family, d$y, n)
  # priors: explicit ones as given; defaults scale to the data
  if (missing_prior || missing_intercept) {
    ds <- default_priors(X, d$y, family)
    if (missing_prior) prior <- ds$prior
    if (missing_intercept) prior_intercept <- ds$intercept
  }
  pa <- prior_arrays(colnames(X), prior, prior_intercept)
  if (any(pa$type != 0L))
    stop("vb(): models with random effects take normal() priors on the fixed effects.", call. = FALSE)
  if (!inherits(prior_precision, "vb_prior") || !identical(prior_precision[["dist"]], "gamma"))
    stop("vb(): 'prior_precision' must be gamma_prior(shape, rate).", call. = FALSE)
  covs <- glmm_covs(re, prior_covariance, family, d$y)
  if (approx == "partial" && length(re$factors) > 1L)
    stop(sprintf("vb(): approx = \"partial\" takes one grouping factor; this model has %d (%s). Use approx = \"block\", \"meanfield\" or (small problems) \"fullrank\".",
                 length(re$factors), paste(names(re$factors), collapse = ", ")), call. = FALSE)
  D <- ncol(X) + sum(vapply(re$factors, function(f) f$ngroups * ncol(f$Z), numeric(1)))
  if (approx == "fullrank" && D > 3000)
    stop(sprintf("vb(): approx = \"fullrank\" keeps a dense %d x %d covariance; it is meant for small problems (at most 3000 coefficients). Use approx = \"partial\" or \"block\".", D, D), call. = FALSE)

  model <- glm_model(X, d$y, d$weights, d$offset, family, pa, prior_precision, control)
  model$factors <- lapply(re$factors, function(f) f[c("group", "ngroups", "Z")])
  model$covs <- covs
  model$approx <- approx_codes[[approx]]
  model$fix_tau <- !is.null(fix_tau)
  ini <- glm_init(model, colnames(X))
  p <- ncol(X)
  init <- list(mu = c(ini[seq_len(p)], numeric(D - p)),
               tau = if (is.null(fix_tau)) ini[p + 1:2] else c(fix_tau, 1))
  core <- .Call(C_glmm_cavi, model, init, control)
  converged <- check_status(core$status, "vb()", core$iterations, control$tol, "maxit")
  glmm_fit_object(core, X, d, family, re, covs, model, approx, pa, prior_precision,
                  prior_covariance, control, converged, t0, mc, formula, mt, mf, yr, x, y)
}

# Parse the bar terms: one entry per grouping factor (terms sharing a factor
# are merged, each keeping its own covariance block).
glmm_terms <- function(bars, mf, env, family, y, n) {
  factors <- list()
  for (b in bars) {
    lhs <- b[[2L]]
    gname <- paste(deparse(b[[3L]]), collapse = "")
    ff <- eval(b[[3L]], mf, env)
    if (anyNA(ff))
      stop(sprintf("vb(): the grouping factor '%s' has missing values; remove those rows (or use na.action).", gname), call. = FALSE)
    ff <- droplevels(as.factor(ff))
    if (nlevels(ff) < 2L)
      stop(sprintf("vb(): the grouping factor '%s' has %d level; a random effect needs at least two groups. Drop the term (%s).",
                   gname, nlevels(ff), paste(deparse(b), collapse = "")), call. = FALSE)
    Z <- model.matrix(eval(substitute(~foo, list(foo = lhs))), mf)
    term <- paste(deparse(b), collapse = "")
    if (ncol(Z) == 0L) stop(sprintf("vb(): the random-effect term (%s) has no columns.", term), call. = FALSE)
    if (any(!is.finite(Z))) stop(sprintf("vb(): the random-effect term (%s) has non-finite values.", term), call. = FALSE)
    for (k in seq_len(ncol(Z)))
      if (all(Z[, k] == 0))
        stop(sprintf("vb(): in the random-effect term (%s) the column '%s' is zero everywhere; drop it.", term, colnames(Z)[k]), call. = FALSE)
    if (ncol(Z) > 1L && design_rank(Z) < ncol(Z)) {
      const <- colnames(Z)[apply(Z, 2L, function(z) length(unique(z)) == 1L) & colnames(Z) != "(Intercept)"]
      stop(sprintf("vb(): the columns of the random-effect term (%s) are linearly dependent%s; a random slope needs a variable that varies. Drop the dependent column.",
                   term, if (length(const)) sprintf(" ('%s' does not vary)", paste(const, collapse = "', '")) else ""), call. = FALSE)
    }
    if (family$family == "gaussian" && nlevels(ff) >= n)
      stop(sprintf("vb(): the grouping factor '%s' has as many levels (%d) as there are observations; with a gaussian model its random effect and the noise cannot be told apart.",
                   gname, nlevels(ff)), call. = FALSE)
    if (is.null(factors[[gname]])) {
      factors[[gname]] <- list(name = gname, f = ff, levels = levels(ff), group = as.integer(ff),
                               ngroups = nlevels(ff), Z = matrix(0, n, 0), terms = list())
    } else if (!identical(levels(factors[[gname]]$f), levels(ff))) {
      stop(sprintf("vb(): the grouping factor '%s' has different levels in two terms (internal error).", gname), call. = FALSE)
    }
    fj <- factors[[gname]]
    dup <- intersect(colnames(Z), colnames(fj$Z))
    if (length(dup))
      stop(sprintf("vb(): the random effect '%s' of '%s' appears in two terms; give each once.", dup[1L], gname), call. = FALSE)
    start <- ncol(fj$Z) + 1L
    fj$terms[[length(fj$terms) + 1L]] <- list(lhs = lhs, bar = b, start = start, d = ncol(Z), names = colnames(Z))
    fj$Z <- cbind(fj$Z, Z)
    storage.mode(fj$Z) <- "double"
    factors[[gname]] <- fj
  }
  for (j in seq_along(factors)) {
    fj <- factors[[j]]
    if (ncol(fj$Z) > 1L && design_rank(fj$Z) < ncol(fj$Z))
      stop(sprintf("vb(): the random effects of '%s' (%s) are linearly dependent; drop one.",
                   fj$name, paste(colnames(fj$Z), collapse = ", ")), call. = FALSE)
  }
  list(factors = factors)
}


# rstanarm-like defaults: N(0, 2.5 s_y / sd(x_k)), intercept N(0, 10 s_y)
default_priors <- function(X, y, family) {
  sy <- if (family$family == "gaussian") stats::sd(y) else 1
  if (!is.finite(sy) || sy <= 0) sy <- 1
  nonint <- colnames(X) != "(Intercept)"
  sx <- apply(X[, nonint, drop = FALSE], 2L, stats::sd)
  sx[!is.finite(sx) | sx <= 0] <- 1
  list(prior = normal(0, if (length(sx)) 2.5 * sy / sx else 1),
       intercept = normal(0, 10 * sy))
}

# covariance blocks for the C engine
glmm_covs <- function(re, pc, family, y) {
  sy <- if (family$family == "gaussian") stats::sd(y) else 1
  if (!is.finite(sy) || sy <= 0) sy <- 1
  out <- list()
  for (j in seq_along(re$factors)) {
    fj <- re$factors[[j]]
    for (tm in fj$terms) {
      d <- tm$d
      Zt <- fj$Z[, tm$start - 1L + seq_len(d), drop = FALSE]
      sz <- apply(Zt, 2L, function(z) if (length(unique(z)) == 1L) 1 / abs(z[1]) else 1 / stats::sd(z))
      auto <- sy * sz
      if (pc$dist == "fixed") {
        S <- as.matrix(pc$Sigma)
        if (!all(dim(S) == d)) stop("fixed_covariance(): Sigma has the wrong dimension.", call. = FALSE)
        out[[length(out) + 1L]] <- list(factor = j, start = tm$start, d = d, type = 2L, df = 0, scale = as.double(S))
        next
      }
      sc <- pc$scale
      if (pc$dist == "huang_wand") {
        A <- if (is.null(sc)) auto else if (length(sc) == 1L) rep(sc, d) else if (length(sc) == d) sc else
          stop(sprintf("huang_wand(): 'scale' has length %d but the term (%s) has %d random-effect dimensions; give one value or one per dimension.",
                       length(sc), paste(deparse(tm$bar), collapse = ""), d), call. = FALSE)
        out[[length(out) + 1L]] <- list(factor = j, start = tm$start, d = d, type = 0L, df = pc$nu, scale = as.double(A))
      } else {
        df <- if (is.null(pc$df)) d + 1 else pc$df
        if (df <= d - 1)
          stop(sprintf("inv_wishart(): 'df' must exceed d - 1 = %d for the term (%s).", d - 1L, paste(deparse(tm$bar), collapse = "")), call. = FALSE)
        Psi <- if (is.null(sc)) diag(auto^2, d) else if (is.matrix(sc)) sc else if (length(sc) == 1L) diag(sc^2, d) else if (length(sc) == d) diag(sc^2, d) else
          stop(sprintf("inv_wishart(): 'scale' does not match the %d dimensions of the term (%s).", d, paste(deparse(tm$bar), collapse = "")), call. = FALSE)
        if (!all(dim(Psi) == d))
          stop(sprintf("inv_wishart(): the 'scale' matrix must be %d x %d for the term (%s).", d, d, paste(deparse(tm$bar), collapse = "")), call. = FALSE)
        out[[length(out) + 1L]] <- list(factor = j, start = tm$start, d = d, type = 1L, df = df, scale = as.double(Psi))
      }
    }
  }
  out
}

glmm_fit_object <- function(core, X, d, family, re, covs, model, approx, pa, prior_precision,
                            prior_covariance, control, converged, t0, mc, formula, mt, mf, yr, x, y) {
  p <- ncol(X); cn <- colnames(X)
  beta <- setNames(core$mu[seq_len(p)], cn)
  V <- matrix(core$beta_cov, p, p, dimnames = list(cn, cn))
  facs <- list()
  pos <- p
  for (j in seq_along(re$factors)) {
    fj <- re$factors[[j]]
    dj <- ncol(fj$Z); G <- fj$ngroups
    M <- matrix(core$mu[pos + seq_len(G * dj)], G, dj, byrow = TRUE, dimnames = list(fj$levels, colnames(fj$Z)))
    S <- array(core$re_cov[[j]], c(dj, dj, G), dimnames = list(colnames(fj$Z), colnames(fj$Z), fj$levels))
    C <- array(core$cross_cov[[j]], c(p, dj, G))
    facs[[fj$name]] <- list(name = fj$name, levels = fj$levels, cnms = colnames(fj$Z), terms = fj$terms,
                            mean = M, cov = S, cross = C, start = pos, Z = fj$Z, group = fj$group)
    pos <- pos + G * dj
  }
  cov_q <- lapply(seq_along(covs), function(c) {
    cv <- covs[[c]]
    fj <- re$factors[[cv$factor]]
    nm <- colnames(fj$Z)[cv$start - 1L + seq_len(cv$d)]
    Psi <- matrix(core$Sigma_q[[c]][[2L]], cv$d, cv$d, dimnames = list(nm, nm))
    list(factor = fj$name, names = nm, type = cv$type, df = core$Sigma_q[[c]][[1L]], Psi = Psi,
         a = core$a_q[[c]], prior = cv)
  })
  eta <- core$eta_mean; v <- core$eta_var
  fitted <- response_mean(family, eta, v, control$gh_nodes)
  yresp <- if (family$family == "binomial") ifelse(d$weights > 0, d$y / pmax(d$weights, 1e-300), 0) else d$y
  fit <- list(coefficients = beta, vcov = V, ranef = facs, cov_q = cov_q,
              elbo = core$elbo, elbo_trace = core$trace,
              elbo_terms = c(elbo = core$elbo, loglik = core$loglik, kl = core$kl),
              converged = converged, status = core$status, iterations = core$iterations,
              tau = if (family$family == "gaussian" && !isTRUE(model$fix_tau)) setNames(core$tau, c("shape", "rate")),
              fixed_tau = if (isTRUE(model$fix_tau)) core$tau[1] / core$tau[2],
              linear.predictors = eta, linear.predictors.var = v,
              fitted.values = fitted, residuals = yresp - fitted,
              family = family, prior.weights = d$weights, offset = d$offset, exposure = d$exposure,
              y = d$y, x = X, approx = approx, Sigma_full = core$Sigma_full,
              prior = list(coef = pa, precision = prior_precision, covariance = prior_covariance),
              control = control, call = mc, formula = formula, terms = mt, model = mf,
              xlevels = .getXlevels(mt, mf), contrasts = attr(X, "contrasts"),
              na.action = attr(mf, "na.action"), response = yr)
  fit$time <- proc.time()[["elapsed"]] - t0
  if (!x) fit[["x"]] <- NULL
  if (!y) fit[["y"]] <- NULL
  class(fit) <- c("vbglmm", "vb_posterior")
  fit
}

#' Hierarchical GLMs: random effects in vb()
#'
#' `vb()` accepts lme4's bar syntax: `(1 | g)`, `(1 + x | g)` (correlated),
#' `(x || g)` (uncorrelated), nested `(1 | a/b)` and crossed factors.  The
#' model is eta = X beta + sum_j Z_j b_j + offset with b_jg ~ N(0, Sigma_j)
#' for each group g of factor j, Sigma_j block diagonal over the terms of
#' that factor, each term's block with the prior `prior_covariance`
#' ([huang_wand()] by default), and the families and response forms of
#' [vb()].  Fixed effects take [normal()] priors; when `prior` or
#' `prior_intercept` are not given they scale to the data (as rstanarm's
#' defaults): N(0, 2.5 s / sd(x_k)) and N(0, 10 s) with s = sd(y) for
#' gaussian models and 1 otherwise.
#'
#' The posterior is approximated by q(beta, b) q(Sigma) q(a) (q(tau)) with
#' q(beta, b) Gaussian:
#' * `"partial"` (the default, one grouping factor): beta coupled to every
#'   group's effects, the groups independent given beta (an arrowhead
#'   precision).  With one factor the exact optimum of the whole Gaussian
#'   family has this form, so this is the full Gaussian approximation at a
#'   cost linear in the number of groups.
#' * `"block"`: q(beta) prod_g q(b_g);  `"meanfield"`: every coefficient
#'   independent;  `"fullrank"`: one dense Gaussian (small problems only).
#' q(Sigma) (inverse Wishart) and q(a) (inverse gamma) are updated in closed
#' form.  The ELBO includes every constant, so it is comparable across
#' random-effect structures and with fits without random effects of the same
#' data ([compare_models()]).
#'
#' Methods: [fixef()], [ranef()], [VarCorr()], `coef()`, `summary()`,
#' `predict()` (with `re.form` and new levels), `simulate()`, [draws()],
#' [elbo()], `nobs()`, `fitted()`, `residuals()`, [vb_diagnose()].
#' @name vb_glmm_details
#' @examples
#' set.seed(1)
#' d <- data.frame(g = factor(rep(1:8, each = 10)), x = rnorm(80))
#' d$y <- 1 + d$x + rnorm(8)[d$g] + rnorm(80, sd = 0.5)
#' fit <- vb(y ~ x + (1 | g), data = d, control = vb_control(quiet = TRUE))
#' fixef(fit)
#' VarCorr(fit)
NULL

#' @importFrom nlme fixef ranef VarCorr
#' @export
nlme::fixef
#' @export
nlme::ranef
#' @export
nlme::VarCorr

#' Fixed effects, random effects and variance components of a hierarchical fit
#'
#' @param object A `vbglmm` fit from [vb()] with random effects.
#' @param condVar For `ranef()`: attach the posterior covariances
#'   (`attr(, "postVar")`, d x d x groups as in lme4) and standard deviations
#'   (`attr(, "postSD")`).
#' @param level Credible level of the intervals in `VarCorr()`.
#' @param ndraws Draws from q(Sigma) for the intervals of `VarCorr()`.
#' @param ... Unused.
#' @return `fixef()`: posterior means of the fixed effects.  `ranef()`: a
#'   list with one data frame per grouping factor (rows = levels, columns =
#'   effects) of posterior means.  `VarCorr()`: a data frame with, per
#'   variance, covariance and residual, its posterior mean and, for standard
#'   deviations and correlations, posterior means and equal-tailed intervals.
#' @examples
#' set.seed(1)
#' d <- data.frame(g = factor(rep(1:8, each = 10)), x = rnorm(80))
#' d$y <- 1 + d$x + rnorm(8)[d$g] + rnorm(80, sd = 0.5)
#' fit <- vb(y ~ x + (1 | g), data = d, control = vb_control(quiet = TRUE))
#' fixef(fit)
#' head(ranef(fit)$g)
#' VarCorr(fit)
#' @name vbglmm-effects
#' @exportS3Method nlme::fixef
fixef.vbglmm <- function(object, ...) object[["coefficients"]]

#' @rdname vbglmm-effects
#' @exportS3Method nlme::ranef
ranef.vbglmm <- function(object, condVar = TRUE, ...) {
  out <- lapply(object[["ranef"]], function(f) {
    df <- as.data.frame(f$mean, check.names = FALSE)
    if (isTRUE(condVar)) {
      attr(df, "postVar") <- f$cov
      sds <- t(apply(f$cov, 3L, function(S) sqrt(diag(S))))
      if (length(f$cnms) == 1L) sds <- matrix(sds, ncol = 1L)
      attr(df, "postSD") <- as.data.frame(matrix(sds, nrow(df), dimnames = list(f$levels, f$cnms)), check.names = FALSE)
    }
    df
  })
  class(out) <- "ranef.vbglmm"
  out
}

#' @export
print.ranef.vbglmm <- function(x, ...) {
  for (nm in names(x)) {
    cat("$", nm, "\n", sep = "")
    y <- x[[nm]]
    attr(y, "postVar") <- attr(y, "postSD") <- NULL
    print(y, ...)
    cat("\n")
  }
  cat("(posterior means; posterior sds in attr(, \"postSD\"))\n")
  invisible(x)
}

# E Sigma of a covariance block: Psi / (m - d - 1) (m > d + 1)
iw_mean <- function(cq) {
  d <- nrow(cq$Psi)
  if (cq$df > d + 1) cq$Psi / (cq$df - d - 1) else matrix(NA_real_, d, d, dimnames = dimnames(cq$Psi))
}
iw_draws <- function(cq, S) {
  Om <- stats::rWishart(S, cq$df, solve(cq$Psi))
  array(apply(Om, 3L, solve), c(nrow(cq$Psi), nrow(cq$Psi), S))
}

#' @rdname vbglmm-effects
#' @exportS3Method nlme::VarCorr
VarCorr.vbglmm <- function(x, level = 0.95, ndraws = 4000, ...) {
  check_level(level)
  ndraws <- check_count(ndraws, "ndraws", 1e6)
  a <- (1 - level) / 2
  rows <- list()
  for (cq in x[["cov_q"]]) {
    E <- iw_mean(cq)
    Sd <- iw_draws(cq, ndraws)
    d <- nrow(E)
    for (i in seq_len(d)) for (j in seq_len(i)) {
      if (i == j) {
        s <- sqrt(Sd[i, i, ])
        rows[[length(rows) + 1L]] <- data.frame(grp = cq$factor, var1 = cq$names[i], var2 = NA_character_,
          vcov = E[i, i], sdcor = mean(s), lower = unname(quantile(s, a)), upper = unname(quantile(s, 1 - a)))
      } else {
        r <- Sd[i, j, ] / sqrt(Sd[i, i, ] * Sd[j, j, ])
        rows[[length(rows) + 1L]] <- data.frame(grp = cq$factor, var1 = cq$names[j], var2 = cq$names[i],
          vcov = E[i, j], sdcor = mean(r), lower = unname(quantile(r, a)), upper = unname(quantile(r, 1 - a)))
      }
    }
  }
  tau <- x[["tau"]]
  if (!is.null(tau)) {
    s <- 1 / sqrt(stats::rgamma(ndraws, tau[["shape"]], tau[["rate"]]))
    rows[[length(rows) + 1L]] <- data.frame(grp = "Residual", var1 = NA_character_, var2 = NA_character_,
      vcov = if (tau[["shape"]] > 1) tau[["rate"]] / (tau[["shape"]] - 1) else NA_real_,
      sdcor = mean(s), lower = unname(quantile(s, a)), upper = unname(quantile(s, 1 - a)))
  }
  out <- do.call(rbind, rows)
  attr(out, "level") <- level
  class(out) <- c("VarCorr.vbglmm", "data.frame")
  out
}

#' @export
print.VarCorr.vbglmm <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  lv <- attr(x, "level")
  tab <- as.data.frame(unclass(x), stringsAsFactors = FALSE)
  attr(tab, "level") <- NULL
  nm <- ifelse(is.na(tab$var2), ifelse(is.na(tab$var1), "", tab$var1), paste(tab$var1, tab$var2, sep = ":"))
  kind <- ifelse(is.na(tab$var2), "sd", "cor")
  show <- data.frame(Groups = ifelse(duplicated(tab$grp), "", tab$grp), Name = nm,
                     Variance = ifelse(kind == "sd", format(tab$vcov, digits = digits), ""),
                     `Std.Dev./Corr` = format(tab$sdcor, digits = digits),
                     lower = format(tab$lower, digits = digits), upper = format(tab$upper, digits = digits),
                     check.names = FALSE)
  names(show)[5:6] <- paste0(format(100 * c((1 - lv) / 2, 1 - (1 - lv) / 2)), "%")
  cat("Variance components (posterior means; intervals for sds and correlations)\n")
  print(show, row.names = FALSE, right = FALSE)
  invisible(x)
}

#' @export
coef.vbglmm <- function(object, ...) {
  b <- object[["coefficients"]]
  out <- lapply(object[["ranef"]], function(f) {
    M <- matrix(b, length(f$levels), length(b), byrow = TRUE, dimnames = list(f$levels, names(b)))
    extra <- setdiff(f$cnms, names(b))
    if (length(extra)) M <- cbind(M, matrix(0, nrow(M), length(extra), dimnames = list(NULL, extra)))
    M[, f$cnms] <- M[, f$cnms] + f$mean
    as.data.frame(M, check.names = FALSE)
  })
  class(out) <- "coef.vbglmm"
  out
}

#' @export
print.coef.vbglmm <- function(x, ...) {
  for (nm in names(x)) { cat("$", nm, "\n", sep = ""); print(x[[nm]], ...); cat("\n") }
  invisible(x)
}

#' @export
confint.vbglmm <- function(object, parm, level = 0.95, ...) {
  flat <- structure(list(coefficients = object[["coefficients"]], vcov = object[["vcov"]]), class = "vb_posterior")
  if (missing(parm)) confint(flat, level = level) else confint(flat, parm, level = level)
}

#' @export
nobs.vbglmm <- function(object, ...) sum(object[["prior.weights"]] != 0)
#' @export
fitted.vbglmm <- function(object, ...) stats::napredict(object[["na.action"]], object[["fitted.values"]])
#' @export
residuals.vbglmm <- function(object, type = c("response", "pearson"), ...) {
  type <- match.arg(type)
  r <- object[["residuals"]]
  if (type == "pearson") {
    mu <- object[["fitted.values"]]
    fam <- object[["family"]]$family
    s <- switch(fam, gaussian = sqrt(object$tau[["rate"]] / object$tau[["shape"]]) / sqrt(object$prior.weights),
                poisson = sqrt(mu), binomial = sqrt(mu * (1 - mu) / pmax(object$prior.weights, 1)))
    r <- r / s
  }
  stats::naresid(object[["na.action"]], r)
}

#' @export
print.vbglmm <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat(sprintf("Hierarchical %s GLM fitted by variational Bayes (approx = \"%s\")\n",
              x$family$family, x$approx))
  cat("Formula: ", paste(deparse(x$formula), collapse = ""), "\n", sep = "")
  cat(sprintf("ELBO: %s   (%s)\n", format(x$elbo, digits = digits + 3), convergence_line(x)))
  cat("\nFixed effects (posterior means):\n")
  print(round(x$coefficients, digits))
  gr <- vapply(x$ranef, function(f) length(f$levels), 1)
  cat(sprintf("\nGroups: %s; observations: %d\n",
              paste(sprintf("%s, %d", names(gr), gr), collapse = "; "), nobs(x)))
  invisible(x)
}

#' @export
summary.vbglmm <- function(object, level = 0.95, ...) {
  check_level(level)
  cf <- object[["coefficients"]]
  sd <- sqrt(diag(object[["vcov"]]))
  ci <- confint(object, level = level)
  tab <- cbind(Estimate = cf, `Post. SD` = sd, ci)
  structure(list(call = object$call, formula = object$formula, family = object$family, approx = object$approx,
                 elbo = object$elbo, elbo_terms = object$elbo_terms, convergence = convergence_line(object),
                 varcor = VarCorr(object, level = level), coefficients = tab,
                 ngroups = vapply(object$ranef, function(f) length(f$levels), 1), nobs = nobs(object)),
            class = "summary.vbglmm")
}

#' @export
print.summary.vbglmm <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat(sprintf("Hierarchical %s GLM fitted by variational Bayes (approx = \"%s\")\n", x$family$family, x$approx))
  cat("Formula: ", paste(deparse(x$formula), collapse = ""), "\n", sep = "")
  cat(sprintf("ELBO: %s (E log-lik %s, KL %s); %s\n\n", format(x$elbo, digits = digits + 3),
              format(x$elbo_terms[["loglik"]], digits = digits + 3), format(x$elbo_terms[["kl"]], digits = digits + 3),
              x$convergence))
  cat("Random effects:\n")
  print(x$varcor, digits = digits)
  cat(sprintf("Number of obs: %d, groups:  %s\n\n", x$nobs,
              paste(sprintf("%s, %d", names(x$ngroups), x$ngroups), collapse = "; ")))
  cat("Fixed effects:\n")
  printCoefmat(x$coefficients, digits = digits, has.Pvalue = FALSE)
  invisible(x)
}
