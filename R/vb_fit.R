#' Matrix-level variational fit of a GLM
#'
#' The workhorse behind [vb()], for users who already have a design matrix
#' (like [stats::glm.fit()]).  Binomial responses are given as successes `y`
#' out of `weights` trials.
#'
#' @param X Numeric design matrix with column names; a column named
#'   `"(Intercept)"` gets `prior_intercept`.
#' @param y Response vector (binomial: number of successes).
#' @param weights Prior weights (binomial: trials); default 1.
#' @param offset Offset on the linear-predictor scale; default 0.
#' @param exposure Poisson exposure (bin width); adds `log(exposure)` to the offset.
#' @param assign Term index per column (as `attr(model.matrix(), "assign")`),
#'   used for the default blocks of `approx = "block"`.
#' @inheritParams vb
#' @return A `vbfit` object without formula information.
#' @examples
#' X <- cbind("(Intercept)" = 1, x = seq(-1, 1, length.out = 50))
#' y <- 1 + 2 * X[, 2] + rnorm(50, sd = 0.3)
#' vb_fit(X, y)$coefficients
#' @export
vb_fit <- function(X, y, family = gaussian(), weights = NULL, offset = NULL, exposure = NULL,
                   prior = normal(0, 1), prior_intercept = normal(0, 10),
                   prior_precision = gamma_prior(1, 1),
                   approx = c("fullrank", "block", "meanfield"), method = c("cavi", "sgvb"),
                   control = vb_control(), assign = NULL) {
  t0 <- proc.time()[["elapsed"]]
  family <- check_family(family)
  approx <- match.arg(approx)
  method <- match.arg(method)
  if (!is.matrix(X) || !is.numeric(X)) stop("vb_fit(): 'X' must be a numeric matrix.", call. = FALSE)
  n <- nrow(X); p <- ncol(X)
  if (n == 0L) stop("vb_fit(): there are no observations.", call. = FALSE)
  if (is.null(colnames(X))) colnames(X) <- paste0("x", seq_len(p))
  storage.mode(X) <- "double"
  if (any(!is.finite(X)))
    stop("vb_fit(): the design matrix contains NA, NaN or infinite values; remove or impute them (na.action handles only NA).", call. = FALSE)
  chk_len <- function(v, nm) {
    if (!is.null(v) && length(v) != n)
      stop(sprintf("vb_fit(): '%s' has length %d but there are %d observations.", nm, length(v), n), call. = FALSE)
  }
  chk_len(y, "y"); chk_len(weights, "weights"); chk_len(offset, "offset")
  if (!is.numeric(y) || any(!is.finite(y))) stop("vb_fit(): 'y' must be finite numbers.", call. = FALSE)
  if (is.null(weights)) weights <- rep(1, n)
  if (is.null(offset)) offset <- rep(0, n)
  if (any(!is.finite(offset))) stop("vb_fit(): 'offset' must be finite.", call. = FALSE)
  if (!is.null(exposure)) {
    exposure <- rep_len(exposure, n)
    if (any(!is.finite(exposure) | exposure <= 0)) stop("vb_fit(): 'exposure' must be finite and positive.", call. = FALSE)
    offset <- offset + log(exposure)
  }
  if (!inherits(prior_precision, "vb_prior") || prior_precision$dist != "gamma")
    stop("'prior_precision' must be gamma_prior(shape, rate).", call. = FALSE)
  pa <- prior_arrays(colnames(X), prior, prior_intercept)
  model <- glm_model(X, y, weights, offset, family, pa, prior_precision, control)

  if (method == "sgvb") {
    sgvb <- get0("sgvb_glm", envir = asNamespace("vbayes"), mode = "function")
    if (is.null(sgvb)) stop("vb(): method = \"sgvb\" is not available in this version.", call. = FALSE)
    core <- sgvb(model, approx, control)
  } else if (family$family == "binomial" && control$binomial_method == "jj") {
    if (approx != "fullrank" || any(pa$type != 0L))
      stop("vb(): binomial_method = \"jj\" (the Jaakkola-Jordan bound) needs approx = \"fullrank\" and normal() priors.", call. = FALSE)
    core <- .Call(C_glm_jj, model, c(control$maxit, control$tol, as.numeric(control$quiet), 0))
    core$blocks <- integer(p)
  } else {
    blocks <- make_blocks(approx, colnames(X), assign, control$blocks)
    init <- glm_init(model, colnames(X))
    core <- .Call(C_glm_cavi, model, init, blocks,
                  c(control$maxit, control$tol, as.numeric(control$quiet), control$joint_means))
    core$blocks <- blocks
  }
  cn <- colnames(X)
  mu <- setNames(core$mu, cn)
  Sigma <- core$Sigma
  dimnames(Sigma) <- list(cn, cn)
  eta <- core$eta_mean
  v <- core$eta_var
  fitted <- response_mean(family, eta, v, control$gh_nodes)
  yresp <- if (family$family == "binomial") ifelse(weights > 0, y / pmax(weights, 1e-300), 0) else y
  rank <- design_rank(X)
  separated <- family$family == "binomial" && p > 0 && is_separated(X, y, weights, offset)
  fit <- list(coefficients = mu, vcov = Sigma, elbo = core$elbo, elbo_trace = core$trace,
              elbo_terms = c(elbo = core$elbo, loglik = core$loglik, kl = core$kl),
              converged = core$converged, iterations = core$iterations,
              tau = if (family$family == "gaussian" && !is.null(core$tau)) setNames(core$tau, c("shape", "rate")),
              linear.predictors = eta, linear.predictors.var = v,
              fitted.values = fitted, residuals = yresp - fitted,
              family = family, prior.weights = weights, offset = offset, exposure = exposure,
              y = y, x = X, rank = rank, approx = approx, method = method,
              blocks = core$blocks, prior = list(coef = pa, precision = prior_precision),
              control = control, mc_se = core$mc_se, separated = separated)
  if (!core$converged)
    warning(if (method == "sgvb")
              sprintf("vb(): SGVB not converged after %d steps; increase vb_control(sgvb_maxit).", core$iterations)
            else sprintf("vb(): not converged after %d iterations (relative ELBO change > %g); increase vb_control(maxit).",
                    core$iterations, control$tol), call. = FALSE)
  if (!is.null(core$sgvb)) fit$sgvb <- core$sgvb # joint q over (beta, log tau), SGVB run data
  fit$time <- proc.time()[["elapsed"]] - t0
  class(fit) <- c("vbfit", "vb_posterior")
  fit
}

# Numerical rank of X from a pivoted Cholesky factor of the column-scaled
# X'X: one crossprod (n p^2 / 2 flops) instead of a QR of X.
design_rank <- function(X) {
  if (ncol(X) == 0L) return(0L)
  cs <- sqrt(colSums(X^2))
  cs[cs == 0] <- 1
  XtX <- crossprod(X) / tcrossprod(cs)
  attr(suppressWarnings(chol(XtX, pivot = TRUE, tol = 1e-9)), "rank")
}

# (Quasi-)complete separation: the binomial likelihood has no finite maximum.
# glm.fit's own diagnosis is what glm() users know; the prior keeps q proper.
is_separated <- function(X, y, weights, offset) {
  sep <- FALSE
  withCallingHandlers(
    stats::glm.fit(X, cbind(y, weights - y), family = binomial(), offset = offset,
                   control = list(epsilon = 1e-8, maxit = 50, trace = FALSE)),
    warning = function(w) {
      if (grepl("fitted probabilities numerically 0 or 1", conditionMessage(w))) sep <<- TRUE
      invokeRestart("muffleWarning")
    })
  sep
}

family_code <- function(family) match(family$family, c("gaussian", "poisson", "binomial")) - 1L

# The list the C core reads (vb_glm_unpack in src/glm.c).
glm_model <- function(X, y, weights, offset, family, pa, prior_precision, control) {
  gh <- if (family$family == "binomial") gauss_hermite(control$gh_nodes) else list(x = numeric(0), w = numeric(0))
  list(X = X, y = as.double(y), offset = as.double(offset), weights = as.double(weights),
       family = family_code(family), prior_type = as.integer(pa$type),
       prior_location = as.double(pa$location), prior_scale = as.double(pa$scale),
       tau_prior = c(prior_precision$shape, prior_precision$rate),
       gh_x = gh$x, gh_w = gh$w)
}

# Rebuild the C model list of a fit (for the log joint, diagnostics, SGVB).
fit_model <- function(fit) {
  if (is.null(fit$x)) stop("this fit was made with x = FALSE; refit with x = TRUE.", call. = FALSE)
  glm_model(fit$x, fit$y, fit$prior.weights, fit$offset, fit$family, fit$prior$coef,
            fit$prior$precision, fit$control)
}

# Gauss-Hermite rule for E g(Z), Z ~ N(0, 1/2) scaled: nodes x, weights summing
# to one, so E g(m + sqrt(2 v) x) integrates against N(m, v).  Golub-Welsch.
gauss_hermite <- function(k) {
  J <- matrix(0, k, k)
  off <- sqrt(seq_len(k - 1L) / 2)
  J[cbind(1:(k - 1L), 2:k)] <- off
  J[cbind(2:k, 1:(k - 1L))] <- off
  e <- eigen(J, symmetric = TRUE)
  list(x = rev(e$values), w = rev(e$vectors[1L, ]^2))
}

# Starting values: prior locations, the intercept at its no-covariate estimate;
# q(tau) from the marginal variance of y.
glm_init <- function(model, cn) {
  y <- model$y; w <- model$weights; off <- model$offset
  mu <- model$prior_location
  i <- which(cn == "(Intercept)")
  pos <- w > 0
  if (length(i) == 1L && any(pos)) {
    mu[i] <- switch(model$family + 1L,
      sum(w[pos] * (y[pos] - off[pos])) / sum(w[pos]),
      log((sum(w * y) + 0.5) / sum(w * exp(off))),
      qlogis((sum(y) + 0.5) / (sum(w) + 1)) - mean(off))
  }
  a0 <- model$tau_prior[1]; b0 <- model$tau_prior[2]
  r <- y[pos] - mean(y[pos])
  c(mu, a0 + sum(pos) / 2, b0 + 0.5 * sum(w[pos] * r^2))
}

# Block labels 0..B-1 for the C engine.
make_blocks <- function(approx, cn, assign, user) {
  p <- length(cn)
  if (approx == "fullrank") return(integer(p))
  if (approx == "meanfield") return(seq_len(p) - 1L)
  if (is.null(user)) {
    lab <- if (is.null(assign)) seq_len(p) else assign
  } else if (is.list(user)) {
    all <- unlist(user)
    if (!is.character(all) || anyDuplicated(all) || !setequal(all, cn))
      stop("vb_control(blocks = ): the blocks must partition the coefficients: every coefficient name (",
           paste(cn, collapse = ", "), ") exactly once.", call. = FALSE)
    lab <- integer(p)
    for (b in seq_along(user)) lab[match(user[[b]], cn)] <- b
  } else {
    if (length(user) != p || anyNA(user))
      stop(sprintf("vb_control(blocks = ): give one block label per coefficient (%d), or a list of names.", p), call. = FALSE)
    lab <- user
  }
  match(lab, unique(lab)) - 1L
}

# Posterior mean of the mean response given eta ~ N(m, v).
response_mean <- function(family, m, v, gh_nodes = 32L) {
  switch(family$family,
    gaussian = m,
    poisson = exp(m + v / 2),
    binomial = {
      gh <- gauss_hermite(gh_nodes)
      drop(plogis(outer(m, rep(1, length(gh$x))) + outer(sqrt(2 * v), gh$x)) %*% gh$w)
    })
}
