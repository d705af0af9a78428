#' Predictions from a variational fit
#'
#' Posterior summaries of the linear predictor or the mean response, with
#' credible intervals (for the mean) or prediction intervals (for a new
#' observation, from the posterior predictive distribution).
#'
#' `type = "response"` returns the posterior mean of the mean response
#' (for poisson, E_q exp(eta) = exp(m + v/2)), not the response at the
#' posterior mean.  Credible intervals are exact quantiles of q pushed through
#' the link; prediction intervals are quantiles of `nsim` posterior predictive
#' draws (so `set.seed()` makes them reproducible).
#'
#' @param object A `vbfit`.
#' @param newdata Optional data frame; the fitted data by default.  Offsets and
#'   exposure are taken from it as in the original call.
#' @param type `"link"` or `"response"`.
#' @param interval `"none"`, `"credible"` (for the mean) or `"prediction"`
#'   (for a new observation; always on the response scale).
#' @param level Interval level.
#' @param nsim Posterior predictive draws for `interval = "prediction"`.
#' @param se.fit If `TRUE`, also return the posterior standard deviation of
#'   the prediction under q (as [stats::predict.glm()] returns standard
#'   errors): sqrt(x' Sigma x) for the linear predictor; for the mean response
#'   the exact sd of g^-1(eta) with eta ~ N(m, v) (poisson:
#'   sqrt((e^v - 1) e^(2m + v)); binomial by Gauss-Hermite quadrature).  With
#'   wide priors these tend to glm's `se.fit` (its delta method).
#' @param ... Unused.
#' @return A vector (no interval) or a matrix with columns `fit`, `lwr`, `upr`;
#'   with `se.fit = TRUE` a list with `fit` (that vector or matrix), `se.fit`
#'   and `residual.scale` ([sigma()] for gaussian, 1 otherwise).
#' @examples
#' fit <- vb(mpg ~ wt, data = mtcars)
#' predict(fit, data.frame(wt = c(2.5, 3.5)), interval = "credible")
#' predict(fit, data.frame(wt = c(2.5, 3.5)), interval = "prediction")
#' @export
predict.vbfit <- function(object, newdata, type = c("link", "response"),
                          interval = c("none", "credible", "prediction"), level = 0.95,
                          nsim = 4000, se.fit = FALSE, ...) {
  type <- match.arg(type)
  interval <- match.arg(interval)
  check_level(level)
  if (!is.logical(se.fit) || length(se.fit) != 1L || is.na(se.fit))
    stop("predict(): 'se.fit' must be TRUE or FALSE.", call. = FALSE)
  if (se.fit) {
    out <- predict.vbfit(object, newdata, type = type, interval = interval, level = level,
                         nsim = nsim, se.fit = FALSE)
    d <- new_design(object, if (missing(newdata)) NULL else newdata, "predict")
    m <- drop(d$X %*% object[["coefficients"]]) + d$offset
    v <- pmax(rowSums((d$X %*% object[["vcov"]]) * d$X), 0)
    se <- if (type == "link" && interval != "prediction") sqrt(v) else
      response_sd(object[["family"]], m, v, object[["control"]][["gh_nodes"]])
    return(list(fit = out, se.fit = setNames(se, rownames(d$X)), residual.scale = sigma(object)))
  }
  d <- new_design(object, if (missing(newdata)) NULL else newdata, "predict")
  mu <- object[["coefficients"]]
  m <- drop(d$X %*% mu) + d$offset
  v <- rowSums((d$X %*% object[["vcov"]]) * d$X)
  fam <- object[["family"]]
  gh <- object[["control"]][["gh_nodes"]]
  a <- (1 - level) / 2
  if (interval == "prediction") {
    ysim <- predictive_draws(object, d, check_count(nsim, "nsim"))
    out <- cbind(fit = response_mean(fam, m, v, gh),
                 lwr = apply(ysim, 1, quantile, a, names = FALSE),
                 upr = apply(ysim, 1, quantile, 1 - a, names = FALSE))
    if (fam$family == "binomial") out[, 2:3] <- out[, 2:3] / d$trials
    return(out)
  }
  fit <- if (type == "link") m else response_mean(fam, m, v, gh)
  if (interval == "none") return(setNames(fit, rownames(d$X)))
  lo <- m + qnorm(a) * sqrt(v); hi <- m + qnorm(1 - a) * sqrt(v)
  if (type == "response") { lo <- fam$linkinv(lo); hi <- fam$linkinv(hi) }
  cbind(fit = fit, lwr = lo, upr = hi)
}

# Posterior sd of the mean response g^-1(eta), eta ~ N(m, v).
response_sd <- function(family, m, v, gh_nodes = 32L) {
  switch(family$family,
    gaussian = sqrt(v),
    poisson = sqrt(expm1(v)) * exp(m + v / 2),
    binomial = {
      gh <- gauss_hermite(max(32L, gh_nodes))
      p <- stats::plogis(outer(sqrt(2 * v), gh$x) + m)
      e1 <- drop(p %*% gh$w); e2 <- drop(p^2 %*% gh$w)
      sqrt(pmax(e2 - e1^2, 0))
    })
}

# Design, offset (with log exposure) and prior weights (binomial: trials);
# new data get weight 1.
# (Exact [[ ]] matching throughout: with x = FALSE, object$x would partially
# match object$xlevels.)
new_design <- function(object, newdata, what = "predict") {
  if (is.null(newdata)) {
    if (is.null(object[["x"]]))
      stop(sprintf("%s(): this fit was made with x = FALSE, so its design matrix is gone; %s.", what,
                   if (what == "predict") "give 'newdata' or refit with x = TRUE" else "refit with x = TRUE"),
           call. = FALSE)
    return(list(X = object[["x"]], offset = object[["offset"]],
                trials = object[["prior.weights"]]))
  }
  if (is.null(object[["terms"]])) stop("predict(): 'newdata' needs a fit made from a formula by vb().", call. = FALSE)
  tt <- delete.response(object[["terms"]])
  mf <- model.frame(tt, newdata, na.action = stats::na.pass, xlev = object[["xlevels"]])
  X <- model.matrix(tt, mf, contrasts.arg = object[["contrasts"]])
  n <- nrow(X)
  off <- rep(0, n)
  if (!is.null(fo <- model.offset(mf))) off <- off + fo
  cl <- object[["call"]]
  env <- environment(object[["terms"]])
  if (!is.null(cl[["offset"]])) off <- off + rep_len(eval(cl[["offset"]], newdata, env), n)
  if (!is.null(cl[["exposure"]])) {
    ex <- rep_len(eval(cl[["exposure"]], newdata, env), n)
    if (any(!is.finite(ex) | ex <= 0)) stop("'exposure' in newdata must be finite and positive.", call. = FALSE)
    off <- off + log(ex)
  }
  list(X = X, offset = off, trials = 1)
}

# n x nsim matrix of posterior predictive draws at design d.
predictive_draws <- function(object, d, nsim) {
  th <- q_sample(object, nsim)[["theta"]]
  p <- ncol(d$X)
  eta <- d$X %*% th[seq_len(p), , drop = FALSE] + d$offset
  n <- nrow(eta)
  switch(object[["family"]]$family,
    gaussian = {
      sig <- exp(-th[p + 1L, ] / 2)   # prior weights scale the noise precision
      eta + matrix(rnorm(n * nsim), n, nsim) * outer(1 / sqrt(rep_len(d$trials, n)), sig)
    },
    poisson = matrix(rpois(n * nsim, exp(eta)), n, nsim),
    binomial = matrix(rbinom(n * nsim, rep_len(d$trials, n), plogis(eta)), n, nsim))
}

#' Simulate responses from the posterior predictive distribution
#'
#' Each simulation draws coefficients (and sigma) from q, then a response for
#' every observation of the fitted data.
#' @param object A `vbfit`.
#' @param nsim Number of simulated response vectors.
#' @param seed Optional seed, as in [stats::simulate()].
#' @param ... Unused.
#' @return A data frame with `nsim` columns `sim_1`, ...
#' @examples
#' fit <- vb(mpg ~ wt, data = mtcars)
#' head(simulate(fit, nsim = 2, seed = 1))
#' @export
simulate.vbfit <- function(object, nsim = 1, seed = NULL, ...) {
  if (!is.null(seed)) set.seed(seed)
  d <- new_design(object, NULL, "simulate")
  ysim <- predictive_draws(object, d, check_count(nsim, "nsim"))
  out <- as.data.frame(ysim)
  names(out) <- paste0("sim_", seq_len(nsim))
  out
}
