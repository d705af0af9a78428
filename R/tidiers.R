#' @importFrom generics tidy glance
#' @export
generics::tidy

#' @export
generics::glance

#' Tidy and glance methods for variational fits
#'
#' `tidy()` gives one row per coefficient (`term, estimate, std.error,
#' conf.low, conf.high`); `glance()` one row for the model (`elbo, loglik, kl,
#' nobs, converged, iterations`).
#' @param x A `vbfit`.
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
#' @method tidy vbfit
#' @export
tidy.vbfit <- function(x, conf.level = 0.95, ...) {
  ci <- confint(x, level = conf.level)
  data.frame(term = names(x$coefficients), estimate = unname(x$coefficients),
             std.error = sqrt(unname(diag(x$vcov))), conf.low = unname(ci[, 1]),
             conf.high = unname(ci[, 2]), stringsAsFactors = FALSE)
}

#' @rdname vbfit_tidiers
#' @method glance vbfit
#' @export
glance.vbfit <- function(x, ...) {
  e <- x$elbo_terms
  data.frame(elbo = e[["elbo"]], loglik = e[["loglik"]], kl = e[["kl"]], nobs = nobs(x),
             converged = isTRUE(x$converged), iterations = x$iterations)
}
