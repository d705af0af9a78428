#' Plot a variational fit
#'
#' `which = "elbo"` draws the ELBO trace over iterations (every posterior has
#' one); `which = "coef"` draws posterior means with credible intervals, one
#' line per coefficient.  The intercept, on a scale of its own that would
#' squeeze every other interval to a point, is left out by default (the
#' title says so); `pars` chooses the coefficients, by name or index.
#' Base graphics; the plotted data are returned invisibly.
#' @param x A fit from [vb()], [vb_fit()] or [vb_density()].
#' @param which `"elbo"` or `"coef"`.
#' @param level Credible level for `which = "coef"`.
#' @param pars For `which = "coef"`: coefficients to show (names or
#'   indices); by default all but `"(Intercept)"`.
#' @param ... Passed to [graphics::plot()].
#' @return The plotted data, invisibly.
#' @examples
#' fit <- vb(mpg ~ wt + hp, data = mtcars)
#' plot(fit, which = "coef")
#' plot(fit, which = "coef", pars = c("(Intercept)", "wt"))
#' @export
plot.vb_posterior <- function(x, which = c("elbo", "coef"), level = 0.95, pars = NULL, ...) {
  which <- match.arg(which)
  if (which == "elbo") {
    tr <- x[["elbo_trace"]]
    if (!length(tr)) stop("plot(): this fit has no ELBO trace.", call. = FALSE)
    it <- seq_along(tr) - 1L
    plot(it, tr, type = "b", pch = 20, xlab = "iteration", ylab = "ELBO",
         main = "ELBO trace", ...)
    return(invisible(data.frame(iteration = it, elbo = tr)))
  }
  check_level(level)
  cf <- coef(x)
  if (!length(cf)) stop("plot(): this fit has no coefficients to show.", call. = FALSE)
  nm <- names(cf)
  note <- ""
  if (is.null(pars)) {
    sel <- nm != "(Intercept)"
    if (!any(sel)) sel[] <- TRUE
    else if (!all(sel)) note <- "(intercept not shown: see pars =)"
    pars <- nm[sel]
  } else {
    bad <- if (is.character(pars)) setdiff(pars, nm) else
      if (is.numeric(pars)) pars[!pars %in% seq_along(cf)] else pars
    if (!length(pars) || length(bad) || !(is.character(pars) || is.numeric(pars)))
      stop(sprintf("plot(): 'pars' must name coefficients (%s) or index them (1 to %d).",
                   paste(nm, collapse = ", "), length(cf)), call. = FALSE)
    if (is.numeric(pars)) pars <- nm[pars]
  }
  ci <- confint(x, parm = pars, level = level)
  est <- cf[pars]
  k <- length(pars)
  yy <- rev(seq_len(k)) # first coefficient on top
  op <- par(mar = c(4.5, max(4, min(30, max(nchar(pars)) * 0.55 + 1)), 3.5, 1))
  on.exit(par(op))
  plot(est, yy, xlim = range(ci, 0), ylim = c(0.5, k + 0.5), yaxt = "n", pch = 19,
       xlab = "coefficient", ylab = "",
       main = sprintf("Posterior means and %g%% credible intervals", 100 * level), ...)
  if (nzchar(note)) graphics::mtext(note, side = 3, line = 0.3, cex = 0.85)
  segments(ci[, 1], yy, ci[, 2], yy, lwd = 2)
  axis(2, at = yy, labels = pars, las = 1)
  abline(v = 0, lty = 3)
  invisible(data.frame(term = pars, estimate = unname(est), lower = unname(ci[, 1]),
                       upper = unname(ci[, 2]), row.names = NULL))
}

# Lags of a filter on an axis with units: times in ms below one second, in s
# otherwise (the basis' bin width is in seconds), or bins when the basis has
# no bin width.  Returns the axis values, the label and the factor from bins.
lag_axis <- function(lag, time) {
  if (all(is.na(time))) return(list(x = lag, lab = "lag (bins)", per_bin = 1))
  per_bin <- time[1] / lag[1]
  if (max(abs(time)) < 1) list(x = 1000 * time, lab = "lag (ms)", per_bin = 1000 * per_bin)
  else list(x = time, lab = "lag (s)", per_bin = per_bin)
}
