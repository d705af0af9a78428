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

has_bars <- function(formula) # (all.names() first: findbars() costs 0.2 ms)
  any(c("|", "||") %in% all.names(formula)) && length(reformulas::findbars(formula)) > 0L

approx_codes <- c(fullrank = 0L, partial = 1L, block = 2L, meanfield = 3L)

# The front end behind vb() for formulas with bars.  `mc` is vb()'s call.
vb_glmm <- function(mc, formula, data, family, prior, prior_intercept, prior_precision,
                    prior_covariance, approx, control, x, y, contrasts, missing_prior,
                    missing_intercept, env, fix_tau = NULL, expand = TRUE) {
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
  if (!"na.action" %in% names(mc) && !is.null(qna <- default_na_action(data))) mf$na.action <- qna
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
  ex <- frame_extras(mf, family, n, expo_scalar)
  w <- ex$w; off <- ex$off; expo <- ex$expo
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
  if (is.null(prior_precision)) { # left out: the flat GLMs' autoscaled default, Gamma(1, 0.01 var(y))
    sdy <- if (family$family == "gaussian") stats::sd(d$y[d$weights > 0]) else 1
    prior_precision <- gamma_prior(1, 0.01 * if (is.finite(sdy) && sdy > 0) sdy^2 else 1)
  }
  prior_precision <- as_vb_prior(prior_precision, "prior_precision", "gamma")
  if (!inherits(prior_precision, "vb_prior") || !identical(prior_precision[["dist"]], "gamma"))
    stop("vb(): 'prior_precision' must be gamma_prior(shape, rate).", call. = FALSE)
  covs <- glmm_covs(re, prior_covariance, family, d$y)
  D <- ncol(X) + sum(vapply(re$factors, function(f) f$ngroups * ncol(f$Z), numeric(1)))
  if (approx == "fullrank" && D > 3000)
    stop(sprintf("vb(): approx = \"fullrank\" keeps a dense %d x %d covariance; it is meant for small problems (at most 3000 coefficients). Use approx = \"partial\" or \"block\".", D, D), call. = FALSE)

  model <- glm_model(X, d$y, d$weights, d$offset, family, pa, prior_precision, control)
  model$factors <- lapply(re$factors, function(f) f[c("group", "ngroups", "Z")])
  model$covs <- covs
  model$approx <- approx_codes[[approx]]
  model$fix_tau <- !is.null(fix_tau)
  model$expand <- isTRUE(expand)
  ini <- glm_init(model, colnames(X), d$scan$ystats)
  p <- ncol(X)
  init <- list(mu = c(ini[seq_len(p)], numeric(D - p)),
               tau = if (is.null(fix_tau)) ini[p + 1:2] else c(fix_tau, 1))
  core <- .Call(C_glmm_cavi, model, init, control)
  converged <- check_status(core$status, "vb()", core$iterations, control$tol, "maxit")
  fit <- glmm_fit_object(core, X, d, family, re, covs, model, approx, pa, prior_precision,
                         prior_covariance, control, converged, t0, mc, formula, mt, mf, yr, x, y)
  # what vcov(correction = "linear_response") needs to rerun the engine from the optimum
  fit$engine <- list(model = model, mu = core$mu, tau = init$tau, fit_tau = core$tau)
  fit
}

#' Posterior covariance of the fixed effects of a hierarchical fit
#'
#' @param object A `vbglmm` fit.
#' @param correction `"none"` (default): the covariance of q(beta).
#'   `"integrate"`: q(beta, b) is independent of q(Sigma) (and q(tau)), so its
#'   covariance is that of beta given Sigma^-1 = E Sigma^-1 — narrower than
#'   the posterior's, which averages Var(beta | Sigma) over Sigma and adds the
#'   spread of E(beta | Sigma).  This correction draws `ndraws` covariance
#'   matrices (and noise precisions) from q, refits q(beta, b) with each held
#'   fixed (from the optimum, a few sweeps each), and returns
#'   mean Var(beta | Sigma_s) + Cov(E(beta | Sigma_s)).
#' @param ndraws Draws of q(Sigma) for `"integrate"`.
#' @param ... Unused.
#' @return A p x p matrix.
#' @examples
#' set.seed(1)
#' d <- data.frame(g = factor(rep(1:8, each = 10)), x = rnorm(80))
#' d$y <- 1 + d$x + rnorm(8)[d$g] + rnorm(80, sd = 0.5)
#' fit <- vb(y ~ x + (1 | g), data = d, control = vb_control(quiet = TRUE))
#' sqrt(diag(vcov(fit)))
#' sqrt(diag(vcov(fit, correction = "integrate", ndraws = 20)))
#' @export
vcov.vbglmm <- function(object, correction = c("none", "integrate"), ndraws = 100, ...) {
  correction <- match.arg(correction)
  V <- object[["vcov"]]
  if (correction == "none" || !length(V)) return(V)
  ndraws <- check_count(ndraws, "ndraws", 1e5)
  eng <- object[["engine"]]
  if (is.null(eng))
    stop("vcov(): this fit does not keep the engine inputs the correction needs; refit it with vb().", call. = FALSE)
  model <- eng$model
  ctl <- object$control
  ctl$quiet <- TRUE
  p <- nrow(V)
  gauss_tau <- !is.null(object$tau)
  draws <- lapply(object$cov_q, function(cq) if (cq$type == 2L) NULL else iw_draws(cq, ndraws))
  taus <- if (gauss_tau) stats::rgamma(ndraws, object$tau[["shape"]], object$tau[["rate"]])
  model$fix_tau <- gauss_tau || isTRUE(model$fix_tau)
  M <- matrix(0, p, ndraws); Vs <- matrix(0, p, p)
  for (s in seq_len(ndraws)) {
    for (c in seq_along(model$covs)) if (!is.null(draws[[c]])) {
      model$covs[[c]]$type <- 2L
      model$covs[[c]]$df <- 0
      model$covs[[c]]$scale <- as.double(draws[[c]][, , s])
    }
    tau <- if (gauss_tau) c(taus[s], 1) else eng$tau
    core <- .Call(C_glmm_cavi, model, list(mu = eng$mu, tau = tau), ctl)
    if (!core$status %in% c(0L, 1L))
      stop(sprintf("vcov(): a refit with a drawn covariance failed (%s).", vb_status_message(core$status)), call. = FALSE)
    M[, s] <- core$mu[seq_len(p)]
    Vs <- Vs + matrix(core$beta_cov, p, p)
  }
  out <- Vs / ndraws + if (ndraws > 1L) stats::cov(t(M)) else 0
  dimnames(out) <- dimnames(V)
  (out + t(out)) / 2
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
              precision = if (length(re$factors) > 1L && !is.null(core$precision)) setNames(core$precision, c("A", "B", "D")),
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
#' * `"partial"` (the default): q(beta | b) prod_j q(b_j), beta coupled to
#'   the effects of every grouping factor j, the factors independent of each
#'   other; each q(b_j) has a precision that is block diagonal over groups
#'   minus a rank-p term, the form the optimum takes.  With one factor this
#'   is the whole Gaussian family (its optimum has an arrowhead precision);
#'   with crossed or nested factors it lies between `"block"` and
#'   `"fullrank"`.  The cost is linear in the number of groups (Schur
#'   complements of the per-factor arrowheads, no dense matrix over the
#'   random effects).
#' * `"block"`: q(beta) prod_g q(b_g);  `"meanfield"`: every coefficient
#'   independent;  `"fullrank"`: one dense Gaussian (small problems only).
#' q(Sigma) (inverse Wishart) and q(a) (inverse gamma) are updated in closed
#' form.  Each sweep ends with a parameter-expansion step per grouping factor
#' (at most 6 effects): the effects b_g are mapped to R b_g with the d x d
#' matrix R that maximises a local model of the ELBO, q(Sigma) following in
#' closed form, and the step is kept only when the ELBO rises.  It leaves the
#' optimum unchanged and removes the slow coupling of q(b) and q(Sigma) when
#' groups have few observations (tens of sweeps instead of hundreds).  The ELBO includes every constant, so it is comparable across
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
#' @param x For `VarCorr()`: a `vbglmm` fit (nlme's generic names it `x`).
#' @param sigma Unused (an argument of nlme's `VarCorr()` generic).
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
#' @export
fixef.vbglmm <- function(object, ...) object[["coefficients"]]

#' @rdname vbglmm-effects
#' @export
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
#' @export
VarCorr.vbglmm <- function(x, sigma = 1, level = 0.95, ndraws = 4000, ...) {
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

# ---- q_sample / log_joint (vb_diagnose, draws, simulate) --------------------
# theta = (beta, b in the engine's order: factor, group, effect, [log_tau],
# per covariance block the lower triangle of Sigma_c (column by column) and,
# for huang_wand, log a_k).  log q and log p are densities in these coordinates.

glmm_theta_names <- function(fit) {
  nm <- names(fit$coefficients)
  for (f in fit$ranef) nm <- c(nm, paste0("b[", rep(f$levels, each = length(f$cnms)), ",", f$cnms, "|", f$name, "]"))
  if (!is.null(fit$tau)) nm <- c(nm, "log_tau")
  for (cq in fit$cov_q) {
    if (cq$type == 2L) next
    d <- length(cq$names)
    ij <- which(lower.tri(diag(d), diag = TRUE), arr.ind = TRUE)
    nm <- c(nm, sprintf("Sigma[%s,%s|%s]", cq$names[ij[, 1]], cq$names[ij[, 2]], cq$factor))
    if (cq$type == 0L) nm <- c(nm, sprintf("log_a[%s|%s]", cq$names, cq$factor))
  }
  nm
}

ldiw <- function(S, m, Psi) { # log inverse-Wishart density at one matrix
  d <- nrow(S)
  R <- chol(S)
  0.5 * m * as.numeric(determinant(Psi)$modulus) - 0.5 * m * d * log(2) - lmvgamma(d, m / 2) -
    (m + d + 1) * sum(log(diag(R))) - 0.5 * sum(diag(Psi %*% chol2inv(R)))
}
lmvgamma <- function(d, x) 0.25 * d * (d - 1) * log(pi) + sum(lgamma(x - (seq_len(d) - 1) / 2))

#' @export
q_sample.vbglmm <- function(fit, S) {
  p <- length(fit$coefficients)
  if (!is.null(fit$Sigma_full)) {
    D <- nrow(fit$Sigma_full)
    mu <- c(fit$coefficients, unlist(lapply(fit$ranef, function(f) as.vector(t(f$mean)))))
    out <- gaussian_q_sample(mu, fit$Sigma_full, S)
    th <- out$theta; lq <- out$logq
  } else if (!is.null(fit$precision) && length(fit$ranef) > 1L && p > 0L) {
    out <- partial_q_sample(fit, S)
    th <- out$theta; lq <- out$logq
  } else {
    qb <- gaussian_q_sample(fit$coefficients, fit$vcov, S)
    th <- qb$theta; lq <- qb$logq
    Vi <- if (p) solve(fit$vcov) else matrix(0, 0, 0)
    dev <- th - fit$coefficients
    for (f in fit$ranef) {
      d <- length(f$cnms); G <- length(f$levels)
      B <- matrix(0, G * d, S)
      for (g in seq_len(G)) {
        Cg <- matrix(f$cross[, , g], p, d)
        K <- if (p) crossprod(Cg, Vi) else matrix(0, d, 0)
        Sc <- matrix(f$cov[, , g], d, d) - if (p) K %*% Cg else 0
        qg <- gaussian_q_sample(numeric(d), (Sc + t(Sc)) / 2, S)
        rows <- (g - 1L) * d + seq_len(d)
        B[rows, ] <- f$mean[g, ] + (if (p) K %*% dev else 0) + qg$theta
        lq <- lq + qg$logq
      }
      th <- rbind(th, B)
    }
  }
  tau <- fit$tau
  if (!is.null(tau)) {
    t <- stats::rgamma(S, tau[["shape"]], tau[["rate"]])
    th <- rbind(th, log(t))
    lq <- lq + stats::dgamma(t, tau[["shape"]], tau[["rate"]], log = TRUE) + log(t)
  }
  for (cq in fit$cov_q) {
    if (cq$type == 2L) next
    d <- length(cq$names)
    Sd <- iw_draws(cq, S)
    lt <- lower.tri(diag(d), diag = TRUE)
    th <- rbind(th, matrix(apply(Sd, 3L, function(M) M[lt]), ncol = S))
    lq <- lq + apply(Sd, 3L, ldiw, m = cq$df, Psi = cq$Psi)
    if (cq$type == 0L) {
      A <- matrix(0, d, S)
      for (k in seq_len(d)) {
        a <- 1 / stats::rgamma(S, cq$a[k, 1], cq$a[k, 2])
        A[k, ] <- log(a)
        lq <- lq + cq$a[k, 1] * log(cq$a[k, 2]) - lgamma(cq$a[k, 1]) - (cq$a[k, 1] + 1) * log(a) - cq$a[k, 2] / a + log(a)
      }
      th <- rbind(th, A)
    }
  }
  rownames(th) <- glmm_theta_names(fit)
  list(theta = th, logq = lq)
}

# Draws from approx = "partial" with several factors, q(beta | b) prod_j q(b_j),
# from its precision blocks A, B_j, D_jg (src/glmm_cavi.c): b_j ~ q(b_j) as the
# b-part of a draw from the two-block arrowhead [[A, B_j], [B_j', D_j]] (whose
# b-marginal is q(b_j)), then beta | b ~ N(mu - A^-1 sum_j B_j (b_j - m_j), A^-1).
# log q(b_j) = log(pair density) - log N(beta_j; -A^-1 B_j (b_j - m_j), A^-1).
partial_q_sample <- function(fit, S) {
  pr <- fit$precision
  p <- length(fit$coefficients)
  lnorm <- function(R, z) sum(log(diag(R))) - 0.5 * colSums(z^2) - 0.5 * nrow(R) * log(2 * pi)
  A <- matrix(pr$A, p, p)
  RA <- chol(A)
  Ainv <- function(v) backsolve(RA, forwardsolve(t(RA), v))
  lq <- numeric(S); acc_all <- matrix(0, p, S); blocks <- list()
  for (j in seq_along(fit$ranef)) {
    f <- fit$ranef[[j]]
    d <- length(f$cnms); G <- length(f$levels)
    B <- array(pr$B[[j]], c(p, d, G)); Dm <- array(pr$D[[j]], c(d, d, G))
    Tm <- A
    for (g in seq_len(G)) Tm <- Tm - matrix(B[, , g], p) %*% solve(matrix(Dm[, , g], d), t(matrix(B[, , g], p)))
    RT <- chol((Tm + t(Tm)) / 2)
    z <- matrix(stats::rnorm(p * S), p, S)
    bj <- backsolve(RT, z)
    lp <- lnorm(RT, z)
    X <- matrix(0, G * d, S); acc <- matrix(0, p, S)
    for (g in seq_len(G)) {
      Bg <- matrix(B[, , g], p); Dg <- matrix(Dm[, , g], d)
      Rg <- chol(Dg)
      zg <- matrix(stats::rnorm(d * S), d, S)
      x <- -solve(Dg, crossprod(Bg, bj)) + backsolve(Rg, zg)
      lp <- lp + lnorm(Rg, zg)
      X[(g - 1L) * d + seq_len(d), ] <- x
      acc <- acc + Bg %*% x
    }
    lq <- lq + lp - lnorm(RA, RA %*% (bj + Ainv(acc)))
    acc_all <- acc_all + acc
    blocks[[j]] <- X + as.vector(t(f$mean))
  }
  z <- matrix(stats::rnorm(p * S), p, S)
  beta <- fit$coefficients - Ainv(acc_all) + backsolve(RA, z)
  lq <- lq + lnorm(RA, z)
  list(theta = rbind(beta, do.call(rbind, blocks)), logq = lq)
}

#' @export
log_joint.vbglmm <- function(fit, theta) {
  if (is.null(fit[["x"]]) || is.null(fit[["y"]]))
    stop("this fit was made with x = FALSE or y = FALSE; refit with both TRUE to evaluate log p(y, theta).", call. = FALSE)
  theta <- as.matrix(theta)
  S <- ncol(theta); X <- fit$x; p <- ncol(X); n <- nrow(X)
  y <- fit$y; w <- fit$prior.weights
  eta <- X %*% theta[seq_len(p), , drop = FALSE] + fit$offset
  pos <- p
  lp <- numeric(S)
  bl <- list()
  for (f in fit$ranef) {
    d <- length(f$cnms); G <- length(f$levels)
    rows <- pos + seq_len(G * d)
    B <- theta[rows, , drop = FALSE]
    for (k in seq_len(d)) eta <- eta + f$Z[, k] * B[(f$group - 1L) * d + k, , drop = FALSE]
    bl[[f$name]] <- B
    pos <- pos + G * d
  }
  fam <- fit$family$family
  pa <- fit$prior$coef
  if (p) lp <- lp + colSums(stats::dnorm(theta[seq_len(p), , drop = FALSE], pa$location, pa$scale, log = TRUE))
  if (fam == "gaussian") {
    if (!is.null(fit$tau)) {
      tau <- exp(theta[pos + 1L, ]); pos <- pos + 1L
      pp <- fit$prior$precision
      lp <- lp + stats::dgamma(tau, pp$shape, pp$rate, log = TRUE) + log(tau)
    } else tau <- rep(fit$fixed_tau, S)
    keep <- w > 0
    r2 <- colSums(w[keep] * (y[keep] - eta[keep, , drop = FALSE])^2)
    lp <- lp + 0.5 * sum(keep) * (log(tau) - log(2 * pi)) + 0.5 * sum(log(w[keep])) - 0.5 * tau * r2
  } else if (fam == "poisson") {
    lp <- lp + colSums(w * (y * eta - exp(eta))) - sum(w * lgamma(y + 1))
  } else {
    lp <- lp + colSums(y * eta - w * log1p(exp(-abs(eta))) - w * pmax(eta, 0)) + sum(lchoose(w, y))
  }
  for (cq in fit$cov_q) {
    d <- length(cq$names)
    f <- fit$ranef[[cq$factor]]
    cols <- match(cq$names, f$cnms)
    B <- bl[[cq$factor]]
    G <- length(f$levels)
    idx <- outer(cols, (seq_len(G) - 1L) * length(f$cnms), `+`)
    if (cq$type == 2L) {
      Sig <- matrix(cq$prior$scale, d, d)
      R <- chol(Sig)
      lp <- lp + vapply(seq_len(S), function(s) {
        Bs <- matrix(B[idx, s], d)
        -0.5 * G * d * log(2 * pi) - G * sum(log(diag(R))) - 0.5 * sum(backsolve(R, Bs, transpose = TRUE)^2)
      }, 0)
      next
    }
    lt <- lower.tri(diag(d), diag = TRUE)
    nl <- sum(lt)
    Sv <- theta[pos + seq_len(nl), , drop = FALSE]; pos <- pos + nl
    if (cq$type == 0L) { la <- theta[pos + seq_len(d), , drop = FALSE]; pos <- pos + d }
    nu <- cq$prior$df; A <- cq$prior$scale
    lp <- lp + vapply(seq_len(S), function(s) {
      Sig <- matrix(0, d, d); Sig[lt] <- Sv[, s]; Sig <- Sig + t(Sig) - diag(diag(Sig), d)
      R <- tryCatch(chol(Sig), error = function(e) NULL)
      if (is.null(R)) return(-Inf)
      Bs <- matrix(B[idx, s], d)
      out <- -0.5 * G * d * log(2 * pi) - G * sum(log(diag(R))) - 0.5 * sum(backsolve(R, Bs, transpose = TRUE)^2)
      if (cq$type == 0L) {
        a <- exp(la[, s])
        out <- out + ldiw(Sig, nu + d - 1, diag(2 * nu / a, d)) +
          sum(0.5 * log(1 / A^2) - lgamma(0.5) - 1.5 * log(a) - 1 / (A^2 * a) + log(a))
      } else out <- out + ldiw(Sig, nu, matrix(A, d, d))
      out
    }, 0)
  }
  lp
}

#' @export
draws.vbglmm <- function(object, n = 1000, ...) {
  n <- check_count(n, "n")
  t(q_sample(object, n)[["theta"]])
}

# ---- predict / simulate -----------------------------------------------------

#' Predictions from a hierarchical variational fit
#'
#' @param object A `vbglmm` fit.
#' @param newdata Optional data frame; the fitted data by default.
#' @param re.form Which random effects to include: `NULL` (all), `NA` or
#'   `~0` (none: the population level), or a formula with the bar terms to
#'   keep, as in lme4.
#' @param allow.new.levels If `TRUE` (default), levels of a grouping factor
#'   not seen in the fit get no group-specific effect: their random effect is
#'   integrated over its distribution N(0, E Sigma), which adds z' E(Sigma) z
#'   to the variance of the linear predictor (and so changes the mean
#'   response for non-identity links).  If `FALSE`, new levels are an error.
#' @param type `"link"` or `"response"` (the posterior mean of the mean response).
#' @param se.fit If `TRUE`, return a list with `fit` and `se.fit` (the
#'   posterior sd of the linear predictor).
#' @param ... Unused.
#' @return A vector of predictions (or a list with `se.fit = TRUE`).
#' @examples
#' set.seed(1)
#' d <- data.frame(g = factor(rep(1:8, each = 10)), x = rnorm(80))
#' d$y <- 1 + d$x + rnorm(8)[d$g] + rnorm(80, sd = 0.5)
#' fit <- vb(y ~ x + (1 | g), data = d, control = vb_control(quiet = TRUE))
#' predict(fit, data.frame(x = 0, g = c("1", "new")))
#' @export
predict.vbglmm <- function(object, newdata, re.form = NULL, allow.new.levels = TRUE,
                           type = c("link", "response"), se.fit = FALSE, ...) {
  type <- match.arg(type)
  keep <- names(object$ranef)
  if (!is.null(re.form)) {
    if (identical(re.form, NA) || (inherits(re.form, "formula") && !length(reformulas::findbars(re.form)))) keep <- character(0)
    else if (inherits(re.form, "formula")) {
      kb <- vapply(reformulas::findbars(re.form), function(b) paste(deparse(b[[3L]]), collapse = ""), "")
      bad <- setdiff(kb, keep)
      if (length(bad)) stop(sprintf("predict(): 're.form' names grouping factors the model does not have: %s.", paste(bad, collapse = ", ")), call. = FALSE)
      keep <- kb
    } else stop("predict(): 're.form' must be NULL, NA or a formula such as ~ (1 | g).", call. = FALSE)
  }
  if (!is.logical(allow.new.levels) || length(allow.new.levels) != 1L || is.na(allow.new.levels))
    stop("predict(): 'allow.new.levels' must be TRUE or FALSE.", call. = FALSE)
  if (missing(newdata) || is.null(newdata)) {
    if (is.null(object[["x"]]))
      stop("predict(): this fit was made with x = FALSE; give 'newdata' or refit with x = TRUE.", call. = FALSE)
    X <- object$x; off <- object$offset
    nd <- NULL
    gidx <- lapply(object$ranef, function(f) f$group)
    Zs <- lapply(object$ranef, function(f) f$Z)
  } else {
    if (!is.data.frame(newdata)) stop("predict(): 'newdata' must be a data frame.", call. = FALSE)
    d <- new_design(object, newdata, "predict")
    X <- d$X; off <- d$offset
    gidx <- list(); Zs <- list()
    for (f in object$ranef[keep]) {
      Z <- NULL; g <- NULL
      for (tm in f$terms) {
        Zt <- model.matrix(eval(substitute(~foo, list(foo = tm$lhs))), newdata)
        Z <- cbind(Z, Zt)
        if (is.null(g)) {
          gv <- eval(tm$bar[[3L]], newdata, environment(object$terms))
          g <- match(as.character(gv), f$levels)
          if (anyNA(gv)) stop(sprintf("predict(): the grouping factor '%s' has missing values in 'newdata'.", f$name), call. = FALSE)
        }
      }
      if (anyNA(g) && !allow.new.levels)
        stop(sprintf("predict(): 'newdata' has levels of '%s' not in the fit (%s); use allow.new.levels = TRUE to integrate over their random effects.",
                     f$name, paste(utils::head(unique(as.character(eval(f$terms[[1]]$bar[[3L]], newdata, environment(object$terms)))[is.na(g)]), 3), collapse = ", ")),
             call. = FALSE)
      gidx[[f$name]] <- g; Zs[[f$name]] <- Z
    }
  }
  b <- object$coefficients
  m <- drop(X %*% b) + off
  v <- rowSums((X %*% object$vcov) * X)
  for (nm in keep) {
    f <- object$ranef[[nm]]; Z <- Zs[[nm]]; g <- gidx[[nm]]
    d <- length(f$cnms)
    known <- !is.na(g)
    ES <- matrix(0, d, d)
    for (cq in object$cov_q) if (cq$factor == nm) {
      ii <- match(cq$names, f$cnms)
      ES[ii, ii] <- if (cq$type == 2L) matrix(cq$prior$scale, cq$prior$d) else iw_mean(cq)
    }
    gi <- g[known]
    Zk <- Z[known, , drop = FALSE]
    m[known] <- m[known] + rowSums(Zk * f$mean[gi, , drop = FALSE])
    for (i in which(known)) {
      z <- Z[i, ]; gg <- g[i]
      v[i] <- v[i] + sum(z * (f$cov[, , gg] %*% z)) + 2 * sum(X[i, ] * (matrix(f$cross[, , gg], length(b)) %*% z))
    }
    if (any(!known)) v[!known] <- v[!known] + rowSums((Z[!known, , drop = FALSE] %*% ES) * Z[!known, , drop = FALSE])
  }
  fit <- if (type == "link") m else response_mean(object$family, m, v, object$control$gh_nodes)
  names(fit) <- rownames(X)
  if (isTRUE(se.fit)) list(fit = fit, se.fit = sqrt(pmax(v, 0))) else fit
}

#' @export
simulate.vbglmm <- function(object, nsim = 1, seed = NULL, ...) {
  if (!is.null(seed)) set.seed(seed)
  nsim <- check_count(nsim, "nsim")
  if (is.null(object[["x"]])) stop("simulate(): this fit was made with x = FALSE; refit with x = TRUE.", call. = FALSE)
  th <- q_sample(object, nsim)$theta
  X <- object$x; p <- ncol(X); n <- nrow(X)
  eta <- X %*% th[seq_len(p), , drop = FALSE] + object$offset
  pos <- p
  for (f in object$ranef) {
    d <- length(f$cnms); G <- length(f$levels)
    B <- th[pos + seq_len(G * d), , drop = FALSE]
    for (k in seq_len(d)) eta <- eta + f$Z[, k] * B[(f$group - 1L) * d + k, , drop = FALSE]
    pos <- pos + G * d
  }
  w <- object$prior.weights
  ysim <- switch(object$family$family,
    gaussian = {
      tau <- if (!is.null(object$tau)) exp(th[pos + 1L, ]) else rep(object$fixed_tau, nsim)
      eta + matrix(stats::rnorm(n * nsim), n, nsim) * outer(1 / sqrt(pmax(w, 1e-300)), 1 / sqrt(tau))
    },
    poisson = matrix(stats::rpois(n * nsim, exp(eta)), n, nsim),
    binomial = matrix(stats::rbinom(n * nsim, rep_len(w, n), stats::plogis(eta)), n, nsim))
  out <- as.data.frame(ysim)
  names(out) <- paste0("sim_", seq_len(nsim))
  out
}
