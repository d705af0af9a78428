#' Plot a variational fit
#'
#' `which = "elbo"` draws the ELBO trace over iterations (every posterior has
#' one); `which = "coef"` draws posterior means with credible intervals.
#' Base graphics; the plotted data are returned invisibly.
#' @param x A fit from [vb()], [vb_fit()] or [vb_density()].
#' @param which `"elbo"` or `"coef"`.
#' @param level Credible level for `which = "coef"`.
#' @param ... Passed to [graphics::plot()].
#' @return The plotted data, invisibly.
#' @examples
#' fit <- vb(mpg ~ wt + hp, data = mtcars)
#' plot(fit, which = "coef")
#' @export
plot.vb_posterior <- function(x, which = c("elbo", "coef"), level = 0.95, ...) {
  which <- match.arg(which)
  if (which == "elbo") {
    tr <- x[["elbo_trace"]]
    if (!length(tr)) stop("plot(): this fit has no ELBO trace.", call. = FALSE)
    it <- seq_along(tr) - 1L
    plot(it, tr, type = "b", pch = 20, xlab = "iteration", ylab = "ELBO",
         main = "ELBO trace", ...)
    return(invisible(data.frame(iteration = it, elbo = tr)))
  }
  ci <- confint(x, level = level)
  cf <- coef(x)
  k <- length(cf)
  op <- par(mar = c(4, max(4, max(nchar(names(cf))) * 0.6), 2, 1))
  on.exit(par(op))
  plot(cf, seq_len(k), xlim = range(ci), yaxt = "n", pch = 19, xlab = "coefficient",
       ylab = "", main = sprintf("Posterior means and %g%% intervals", 100 * level), ...)
  segments(ci[, 1], seq_len(k), ci[, 2], seq_len(k))
  axis(2, at = seq_len(k), labels = names(cf), las = 1)
  abline(v = 0, lty = 3)
  invisible(data.frame(term = names(cf), estimate = cf, lower = ci[, 1], upper = ci[, 2]))
}
