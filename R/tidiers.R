#' @importFrom generics tidy glance augment
#' @export
generics::tidy

#' @export
generics::glance

#' @export
generics::augment

#' Tidy, glance and augment methods for variational fits
#'
#' `tidy()` gives one row per coefficient: `term`, `estimate` (the posterior
#' mean under q), `std.error` (the posterior sd) and, with `conf.int = TRUE`,
#' `conf.low`/`conf.high`, the equal-tailed `conf.level` credible interval of
#' q.  `exponentiate = TRUE` (for log and logit links: rate ratios, odds
#' ratios) reports exp(estimate) and the interval mapped through exp, as
#' broom does for [glm()]; since q is Gaussian, exp(mean) is the posterior
#' median of exp(beta) and the mapped interval is exactly the interval of
#' exp(beta).  `std.error` stays the sd of beta on the link scale (as in
#' broom).
#'
#' `glance()` gives one row for the model with what the fit has: `elbo`,
#' `loglik` and `kl` (its terms; fits of a log density have only `elbo`,
#' with its Monte Carlo standard error `elbo_se`), `nobs` for fits with data
#' (from [vb()] and [vb_fit()]), `converged` and `iterations`; with
#' `looic = TRUE` (\pkg{loo} needed) also `elpd_loo`, `p_loo` and `looic`
#' from [loo()].  A [vb_density()] fit has no observations: as broom does
#' for models without data, its `glance()` has no `nobs` column.
#'
#' `augment()` adds to the data one row per observation: `.fitted` (the
#' posterior mean of the linear predictor or of the mean response, as
#' [predict.vbfit()]), `.se.fit` with `se_fit = TRUE` (the posterior sd on the
#' same scale), `.lower`/`.upper` with `interval = "credible"` or
#' `"prediction"`, and `.resid` (response residuals y - E mu) where the
#' response is at hand.
#' @param x A fit from [vb()], [vb_fit()] or [vb_density()] (`augment()`:
#'   from [vb()] or [vb_fit()]).
#' @param conf.int Add `conf.low`/`conf.high`?
#' @param conf.level Credible level of the intervals.
#' @param exponentiate Report exp(estimate) and exp of the interval?
#' @param looic Add the \pkg{loo} estimates to `glance()`?
#' @param data For `augment()`: the data to add columns to, one row per
#'   fitted observation (with `na.exclude`, the original data are accepted
#'   too); by default the model frame.
#' @param newdata For `augment()`: new data instead (the response, if
#'   present, gives `.resid`).
#' @param type.predict `"link"` or `"response"`.
#' @param se_fit Add `.se.fit`?
#' @param interval `"none"`, `"credible"` or `"prediction"`.
#' @param ... Unused (`glance()`: passed to [loo()]).
#' @return A data frame.
#' @examples
#' fit <- vb(mpg ~ wt, data = mtcars)
#' tidy(fit, conf.int = TRUE, conf.level = 0.9)
#' glance(fit)
#' head(augment(fit, se_fit = TRUE))
#' @name vbfit_tidiers
NULL

#' @rdname vbfit_tidiers
#' @method tidy vb_posterior
#' @export
tidy.vb_posterior <- function(x, conf.int = FALSE, conf.level = 0.95, exponentiate = FALSE, ...) {
  eco_flag(conf.int, "conf.int", "tidy")
  eco_flag(exponentiate, "exponentiate", "tidy")
  check_level(conf.level)
  cf <- coef(x)
  if (is.null(cf))
    stop(sprintf("tidy(): this %s fit has no coefficients.", class(x)[1L]), call. = FALSE)
  out <- data.frame(term = names(cf), estimate = unname(cf),
                    std.error = sqrt(unname(diag(vcov(x)))), stringsAsFactors = FALSE)
  if (conf.int) {
    ci <- confint(x, level = conf.level)
    out$conf.low <- unname(ci[, 1])
    out$conf.high <- unname(ci[, 2])
  }
  if (exponentiate) {
    out$estimate <- exp(out$estimate)
    if (conf.int) {
      out$conf.low <- exp(out$conf.low)
      out$conf.high <- exp(out$conf.high)
    }
  }
  out
}

eco_flag <- function(v, nm, what) {
  if (!is.logical(v) || length(v) != 1L || is.na(v))
    stop(sprintf("%s(): '%s' must be TRUE or FALSE.", what, nm), call. = FALSE)
}

#' @rdname vbfit_tidiers
#' @method glance vb_posterior
#' @export
glance.vb_posterior <- function(x, looic = FALSE, ...) {
  eco_flag(looic, "looic", "glance")
  out <- data.frame(elbo = elbo(x))
  e <- x[["elbo_terms"]]
  if (!is.null(e) && all(c("loglik", "kl") %in% names(e))) {
    out$loglik <- e[["loglik"]]
    out$kl <- e[["kl"]]
  } else if (!is.null(x[["mc_se"]])) out$elbo_se <- x[["mc_se"]]
  out$converged <- isTRUE(x[["converged"]])
  out$iterations <- as.integer(x[["iterations"]])
  if (looic) {
    est <- loo(x, ...)$estimates
    out$elpd_loo <- est["elpd_loo", "Estimate"]
    out$p_loo <- est["p_loo", "Estimate"]
    out$looic <- est["looic", "Estimate"]
  }
  out
}

#' @rdname vbfit_tidiers
#' @method glance vbfit
#' @export
glance.vbfit <- function(x, looic = FALSE, ...) {
  out <- NextMethod()
  cbind(out[c("elbo", "loglik", "kl")], nobs = nobs(x),
        out[setdiff(names(out), c("elbo", "loglik", "kl"))])
}

#' @rdname vbfit_tidiers
#' @method augment vbfit
#' @export
augment.vbfit <- function(x, data = NULL, newdata = NULL, type.predict = c("link", "response"),
                          se_fit = FALSE, interval = c("none", "credible", "prediction"),
                          conf.level = 0.95, ...) {
  type.predict <- match.arg(type.predict)
  interval <- match.arg(interval)
  eco_flag(se_fit, "se_fit", "augment")
  check_level(conf.level)
  if (!is.null(newdata)) {
    if (!is.data.frame(newdata)) stop("augment(): 'newdata' must be a data frame.", call. = FALSE)
    out <- newdata
    d <- new_design(x, newdata, "augment")
  } else {
    d <- new_design(x, NULL, "augment")
    n <- nrow(d$X)
    out <- if (is.null(data)) x[["model"]] else data
    if (is.null(out)) out <- data.frame(row.names = rownames(d$X))
    if (!is.data.frame(out)) stop("augment(): 'data' must be a data frame.", call. = FALSE)
    na <- x[["na.action"]]
    if (nrow(out) != n && !(inherits(na, "exclude") && nrow(out) == n + length(na)))
      stop(sprintf("augment(): 'data' has %d rows but the fit has %d observations; give the data the model was fitted to.",
                   nrow(out), n), call. = FALSE)
  }
  pad <- if (is.null(newdata) && nrow(out) != nrow(d$X)) function(v) stats::naresid(x[["na.action"]], v) else identity
  m <- drop(d$X %*% coef(x)) + d$offset
  v <- rowSums((d$X %*% vcov(x)) * d$X)
  mom <- eco_moments(x, m, v, type.predict)
  out$.fitted <- pad(unname(mom$mean))
  if (se_fit) out$.se.fit <- pad(unname(mom$sd))
  if (interval != "none") {
    pr <- predict(x, newdata = if (is.null(newdata)) NULL else newdata,
                  type = if (interval == "prediction") "response" else type.predict,
                  interval = interval, level = conf.level)
    out$.lower <- pad(unname(pr[, "lwr"]))
    out$.upper <- pad(unname(pr[, "upr"]))
  }
  yresp <- if (is.null(newdata)) x[["y"]] / (if (x[["family"]]$family == "binomial") pmax(x[["prior.weights"]], 1e-300) else 1)
    else eco_newresponse(x, newdata)
  if (!is.null(yresp)) {
    mu <- if (type.predict == "response") mom$mean else eco_moments(x, m, v, "response")$mean
    out$.resid <- pad(unname(yresp - mu))
  }
  out
}

# The response of newdata on the scale of fitted values (binomial:
# proportions), or NULL when newdata does not carry it.
eco_newresponse <- function(x, newdata) {
  mf <- tryCatch(model.frame(x[["terms"]], newdata, na.action = stats::na.pass, xlev = x[["xlevels"]]),
                 error = function(e) NULL)
  yr <- if (!is.null(mf)) model.response(mf, "any")
  if (is.null(yr)) return(NULL)
  r <- family_response(yr, NULL, x[["family"]], nrow(mf))
  if (x[["family"]]$family == "binomial") r$y / pmax(r$weights, 1e-300) else r$y
}

# Posterior mean and sd of the linear predictor (eta ~ N(m, v) under q) or of
# the mean response mu = g^-1(eta): gaussian mu = eta; poisson mu = exp(eta)
# is lognormal, E = exp(m + v/2), sd = E sqrt(exp(v) - 1); binomial by
# Gauss-Hermite quadrature of E sigmoid(eta) and E sigmoid(eta)^2.
eco_moments <- function(x, m, v, type) {
  fam <- x[["family"]]$family
  if (type == "link" || fam == "gaussian") return(list(mean = m, sd = sqrt(v)))
  if (fam == "poisson") {
    e <- exp(m + v / 2)
    return(list(mean = e, sd = e * sqrt(expm1(v))))
  }
  k <- x[["control"]][["gh_nodes"]]
  gh <- gauss_hermite(if (is.null(k)) 32L else k)
  s <- stats::plogis(m + outer(sqrt(2 * v), gh$x))
  e1 <- drop(s %*% gh$w)
  e2 <- drop(s^2 %*% gh$w)
  list(mean = e1, sd = sqrt(pmax(e2 - e1^2, 0)))
}

#' @rdname vbfit_tidiers
#' @method augment vb_posterior
#' @export
augment.vb_posterior <- function(x, ...) no_data(x, "augment")
