#' @importFrom generics tidy glance
#' @export
generics::tidy

#' @export
generics::glance

#' Tidy and glance methods for variational fits
#'
#' `tidy()` gives one row per coefficient (`term, estimate, std.error,
#' conf.low, conf.high`) from the Gaussian q.  `glance()` gives one row for
#' the model with what the fit has: `elbo`, `loglik` and `kl` (its terms;
#' fits of a log density have only `elbo`, with its Monte Carlo standard
#' error `elbo_se`), `nobs` for fits with data (from [vb()] and [vb_fit()]),
#' `converged` and `iterations`.
#'
#' A [vb_density()] fit approximates the posterior of a log density and has
#' no observations: as broom does for models without data, its `glance()`
#' has no `nobs` column, and `nobs()` on it stops with an error rather than
#' returning 0.
#' @param x A fit from [vb()], [vb_fit()] or [vb_density()].
#' @param conf.level Credible level of `conf.low`/`conf.high`.
#' @param ... Unused.
#' @return A data frame.
#' @examples
#' fit <- vb(mpg ~ wt, data = mtcars)
#' tidy(fit)
#' glance(fit)
#' @name vbfit_tidiers
NULL

#' @rdname vbfit_tidiers
#' @method tidy vb_posterior
#' @export
tidy.vb_posterior <- function(x, conf.level = 0.95, ...) {
  ci <- confint(x, level = conf.level)
  cf <- coef(x)
  data.frame(term = names(cf), estimate = unname(cf),
             std.error = sqrt(unname(diag(vcov(x)))), conf.low = unname(ci[, 1]),
             conf.high = unname(ci[, 2]), stringsAsFactors = FALSE)
}

#' @rdname vbfit_tidiers
#' @method glance vb_posterior
#' @export
glance.vb_posterior <- function(x, ...) {
  out <- data.frame(elbo = elbo(x))
  e <- x[["elbo_terms"]]
  if (!is.null(e) && all(c("loglik", "kl") %in% names(e))) {
    out$loglik <- e[["loglik"]]
    out$kl <- e[["kl"]]
  } else if (!is.null(x[["mc_se"]])) out$elbo_se <- x[["mc_se"]]
  out$converged <- isTRUE(x[["converged"]])
  out$iterations <- as.integer(x[["iterations"]])
  out
}

#' @rdname vbfit_tidiers
#' @method glance vbfit
#' @export
glance.vbfit <- function(x, ...) {
  out <- NextMethod()
  cbind(out[c("elbo", "loglik", "kl")], nobs = nobs(x), out[c("converged", "iterations")])
}
