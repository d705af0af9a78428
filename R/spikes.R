# Spike-train toolkit: from spike times to a point-process GLM fitted by vb().
#
#   bin_spikes()           spike times -> counts in half-open bins
#   raised_cosine_basis()  log-time raised cosines (Pillow et al. 2008)
#   spike_history()        causal lag-basis convolution, a term of a vb() formula
#   filters()              posterior filter shapes B beta with credible bands
#   bits_per_spike()       log-likelihood gain over a homogeneous Poisson null
#   simulate_spikes()      spikes generated bin by bin through the fitted filter
#
# The two loops live in src/spikes.c (C_spikes_history, C_spikes_simulate).

#' Bin spike times into counts
#'
#' Counts spikes in consecutive bins of width `binwidth` from `start` to
#' `end`.  Bins are half-open: bin k covers \[start + (k-1) binwidth,
#' start + k binwidth), so a spike exactly on a bin edge belongs to the
#' bin it opens, and a spike at `end` is outside the range.  Spikes outside
#' \[start, end) are dropped and a message says how many.
#'
#' @param times Spike times: a numeric vector, sorted increasingly, or a list
#'   of such vectors (one per trial or one per neuron).  Times must be finite;
#'   remove missing values first (e.g. with [stats::na.omit()]).
#' @param binwidth Bin width, in the units of `times` (a positive number).
#' @param start Left edge of the first bin.
#' @param end Right edge of the last bin; `end - start` must be a whole number
#'   of bins.  By default, the first bin edge after the last spike.
#' @param by For a list: `"trial"` stacks the elements as trials (a long data
#'   frame with a `trial` column); `"neuron"` puts them side by side as
#'   simultaneously recorded neurons, one count column each.
#' @return A data frame with one row per bin: `time` (the left edge of the bin)
#'   and `spikes` (the count) for a vector; `trial`, `time`, `spikes` for a list
#'   of trials; `time` and one column per neuron (named after the list, or
#'   `n1`, `n2`, ...) for a list of neurons.
#' @seealso [spike_history()] to build history terms from the counts.
#' @examples
#' bin_spikes(c(0.001, 0.004, 0.0101, 0.03), binwidth = 0.01, start = 0, end = 0.04)
#' # trials from boot::neuro (spike times in ms around a stimulus)
#' if (requireNamespace("boot", quietly = TRUE)) {
#'   trials <- lapply(1:3, function(i) as.numeric(na.omit(boot::neuro[i, ])))
#'   head(bin_spikes(trials, binwidth = 5, start = -250, end = 250))
#' }
#' @export
bin_spikes <- function(times, binwidth, start = 0, end = NULL, by = c("trial", "neuron")) {
  by <- match.arg(by)
  is_list <- is.list(times)
  tl <- if (is_list) times else list(times)
  if (length(tl) == 0L) stop("bin_spikes(): 'times' is an empty list; give at least one vector of spike times.", call. = FALSE)
  for (i in seq_along(tl)) {
    what <- if (is_list) sprintf("element %d of 'times'", i) else "'times'"
    x <- tl[[i]]
    if (!is.numeric(x)) stop(sprintf("bin_spikes(): %s must be numeric spike times.", what), call. = FALSE)
    if (any(!is.finite(x)))
      stop(sprintf("bin_spikes(): %s contains NA, NaN or infinite values; remove them first (e.g. with na.omit()).", what), call. = FALSE)
    if (is.unsorted(x))
      stop(sprintf("bin_spikes(): %s is not sorted; spike times must be increasing (use sort()).", what), call. = FALSE)
    tl[[i]] <- as.numeric(x)
  }
  if (!is.numeric(binwidth) || length(binwidth) != 1L || !is.finite(binwidth) || binwidth <= 0)
    stop("bin_spikes(): 'binwidth' must be one finite positive number.", call. = FALSE)
  if (!is.numeric(start) || length(start) != 1L || !is.finite(start))
    stop("bin_spikes(): 'start' must be one finite number.", call. = FALSE)
  if (is.null(end)) {
    last <- max(c(start, unlist(tl)))
    end <- start + (floor((last - start) / binwidth) + 1) * binwidth
  }
  if (!is.numeric(end) || length(end) != 1L || !is.finite(end))
    stop("bin_spikes(): 'end' must be one finite number.", call. = FALSE)
  if (end <= start) stop("bin_spikes(): 'end' must be greater than 'start'.", call. = FALSE)
  nb <- (end - start) / binwidth
  if (!is.finite(nb) || nb > .Machine$integer.max - 1)
    stop(sprintf("bin_spikes(): (end - start) / binwidth = %g bins is more than a vector of counts can hold; use a wider 'binwidth' or a shorter interval.", nb), call. = FALSE)
  if (abs(nb - round(nb)) > 1e-8 * max(1, nb))
    stop(sprintf("bin_spikes(): 'end' - 'start' (%g) is not a whole number of bins of width %g; adjust 'end'.",
                 end - start, binwidth), call. = FALSE)
  nb <- as.integer(round(nb))
  breaks <- start + (0:nb) * binwidth
  breaks[nb + 1L] <- end
  dropped <- 0L
  counts <- lapply(tl, function(x) {
    k <- findInterval(x, breaks)        # breaks[k] <= x < breaks[k + 1]
    inside <- k >= 1L & k <= nb
    dropped <<- dropped + sum(!inside)
    tabulate(k[inside], nb)
  })
  if (dropped > 0L)
    message(sprintf("bin_spikes(): dropped %d spike%s outside [start, end) = [%g, %g).",
                    dropped, if (dropped == 1L) "" else "s", start, end))
  time <- breaks[-(nb + 1L)]
  if (!is_list) return(data.frame(time = time, spikes = counts[[1L]]))
  nm <- names(tl)
  if (by == "trial") {
    tr <- if (is.null(nm) || any(nm == "")) seq_along(tl) else nm
    return(data.frame(trial = rep(tr, each = nb), time = rep(time, length(tl)),
                      spikes = unlist(counts, use.names = FALSE)))
  }
  if (is.null(nm) || any(nm == "")) nm <- paste0("n", seq_along(tl))
  out <- data.frame(time = time, counts, check.names = TRUE)
  names(out) <- make.unique(c("time", nm))
  out
}

#' Log-time raised-cosine basis
#'
#' The basis of Pillow et al. (2008) for post-spike (history) and coupling
#' filters: bumps that are narrow at short lags and broad at long ones.  With
#' y(t) = log(t + offset), the centres c_1, ..., c_n are equally spaced (step
#' db) from y(peaks\[1\]) to y(peaks\[2\]), and
#' B\[t, j\] = (cos(clamp((y(t) - c_j) pi / (2 db), -pi, pi)) + 1) / 2.
#' Rows are the time lags binwidth, 2 binwidth, ... up to where the last bump
#' returns to zero, t = exp(c_n + 2 db) - offset; row l is the lag of l bins,
#' as [spike_history()] expects.  Each bump spans 4 db on the log axis, so four
#' bumps overlap at any lag between the second and the next-to-last peak, where
#' the columns sum to 2.  With `n = 1` the single
#' bump peaks at `peaks[1]` and db = y(peaks\[2\]) - y(peaks\[1\]).
#'
#' @param n Number of basis functions (a whole number >= 1).
#' @param peaks Increasing pair: the times of the first and last peaks.
#' @param offset Positive offset of the log time axis; larger values make the
#'   bumps more nearly evenly spaced.
#' @param binwidth Time step of the rows (the bin width of the counts).
#' @return A matrix with one row per lag and `n` columns, with attributes
#'   `binwidth`, `lags` (in bins), `time` (lags times binwidth), `centers`
#'   (c_j, on the log scale) and `db`.
#' @references Pillow, J. W., Shlens, J., Paninski, L., Sher, A., Litke, A. M.,
#'   Chichilnisky, E. J. and Simoncelli, E. P. (2008). Spatio-temporal
#'   correlations and visual signalling in a complete neuronal population.
#'   *Nature* 454, 995-999.
#' @examples
#' B <- raised_cosine_basis(5, peaks = c(0.1, 2), offset = 0.5, binwidth = 0.01)
#' dim(B)
#' matplot(attr(B, "time"), B, type = "l", lty = 1, xlab = "lag (s)", ylab = "")
#' @export
raised_cosine_basis <- function(n, peaks, offset, binwidth) {
  if (!is.numeric(n) || length(n) != 1L || !is.finite(n) || n < 1 || n != round(n) || n > 1e4)
    stop("raised_cosine_basis(): 'n' must be a whole number between 1 and 10000 (the number of basis functions).", call. = FALSE)
  if (!is.numeric(offset) || length(offset) != 1L || !is.finite(offset) || offset <= 0)
    stop("raised_cosine_basis(): 'offset' must be one finite positive number.", call. = FALSE)
  if (!is.numeric(peaks) || length(peaks) != 2L || any(!is.finite(peaks)))
    stop("raised_cosine_basis(): 'peaks' must be two finite numbers, the first and last peak times.", call. = FALSE)
  if (peaks[2] <= peaks[1])
    stop("raised_cosine_basis(): 'peaks' must be increasing: peaks[1] < peaks[2].", call. = FALSE)
  if (peaks[1] + offset <= 0)
    stop("raised_cosine_basis(): 'peaks[1] + offset' must be positive (the basis lives on log(t + offset)).", call. = FALSE)
  if (!is.numeric(binwidth) || length(binwidth) != 1L || !is.finite(binwidth) || binwidth <= 0)
    stop("raised_cosine_basis(): 'binwidth' must be one finite positive number.", call. = FALSE)
  n <- as.integer(n)
  yr <- log(peaks + offset)
  db <- if (n > 1L) (yr[2] - yr[1]) / (n - 1L) else yr[2] - yr[1]
  ctr <- yr[1] + (seq_len(n) - 1L) * db
  tmax <- exp(ctr[n] + 2 * db) - offset
  nt <- floor(tmax / binwidth + 1e-8)
  if (nt < 1L)
    stop("raised_cosine_basis(): the basis is shorter than one bin; use a smaller 'binwidth' or later 'peaks'.", call. = FALSE)
  if (nt > 1e6)
    stop(sprintf("raised_cosine_basis(): the basis would have %.0f rows; use a larger 'binwidth'.", nt), call. = FALSE)
  lags <- seq_len(nt)
  tt <- lags * binwidth
  arg <- outer(log(tt + offset), ctr, "-") * (pi / (2 * db))
  B <- (cos(pmin(pmax(arg, -pi), pi)) + 1) / 2
  dim(B) <- c(nt, n)
  structure(B, binwidth = binwidth, lags = lags, time = tt, centers = ctr, db = db)
}

#' History and coupling terms for a point-process GLM
#'
#' `spike_history(x, basis)` is used inside a [vb()] formula: `spikes ~ stim +
#' spike_history(spikes, B)` adds a post-spike filter, and
#' `spike_history(other, B)` a
#' coupling filter from another neuron.  It returns the causal convolution of
#' `x` with each column of `basis`: the row for bin t is
#' H\[t, j\] = sum_l basis\[l, j\] x\[t - (first_lag - 1) - l\],
#' so with the default `first_lag = 1` row l of `basis` is the lag of l bins,
#' bin t uses x\[t-1\], x\[t-2\], ... and never its own count.  Within `trial`,
#' the sum stops at the start of the trial (earlier trials are not seen).
#'
#' The result is one matrix, so [stats::model.matrix()] makes it one term
#' (one block of the posterior under `approx = "block"`), with coefficients
#' named like `spike_history(spikes, B)h1`.  Because the term is re-evaluated on
#' new data, [predict.vbfit()], [bits_per_spike()] and [simulate_spikes()]
#' work on held-out data that carry the same variables.  [filters()] maps the
#' coefficients back to filter shapes `basis %*% beta`.
#'
#' A fitted term remembers its basis and first lag (a
#' [stats::makepredictcall()] method stores them in the terms of the fit, as
#' [stats::poly()] terms remember their coefficients): redefining or removing
#' the basis matrix after fitting does not change [predict.vbfit()],
#' [bits_per_spike()] or [simulate_spikes()] on new data.
#'
#' The function was called `history()` before vbayes 0.2.0; that name masked
#' [utils::history()] when the package was attached, so it is no longer
#' exported.  `vbayes:::history()` remains for one release as a deprecated
#' alias.
#'
#' @param x Numeric series to filter, usually spike counts (finite).
#' @param basis Lag basis: a numeric matrix with one row per lag (as from
#'   [raised_cosine_basis()]; `diag(L)` gives one free weight per lag) or a
#'   vector (a single filter shape).
#' @param trial Optional vector as long as `x` marking trials; history resets
#'   wherever it changes.  `NULL`: one continuous recording.
#' @param first_lag Lag, in bins, of the first row of `basis`: 1 (default;
#'   causal) or more, or 0 for a stimulus filter that includes the current bin.
#'   Never use 0 with the response itself.
#' @return An `length(x)` x `ncol(basis)` matrix with column names `h1`, ...,
#'   and attributes `basis`, `first_lag`, `binwidth` (from the basis, if any).
#' @seealso [raised_cosine_basis()], [filters()], [simulate_spikes()].
#' @examples
#' spike_history(c(0, 1, 0, 0, 2, 0), basis = diag(2))
#' B <- raised_cosine_basis(4, c(0.005, 0.04), 0.01, 0.005)
#' fit <- vb(spikes ~ stim + spike_history(spikes, B, trial), data = neuron[1:4000, ],
#'           family = poisson(), exposure = 0.005)
#' coef(fit)
#' @export
spike_history <- function(x, basis, trial = NULL, first_lag = 1L) {
  if (!is.numeric(x) && !is.logical(x)) stop("spike_history(): 'x' must be a numeric vector (spike counts).", call. = FALSE)
  if (is.matrix(x) && ncol(x) != 1L) stop("spike_history(): 'x' must be a vector, not a matrix.", call. = FALSE)
  x <- as.double(x)
  if (any(!is.finite(x)))
    stop("spike_history(): 'x' contains NA, NaN or infinite values; history needs the complete series.", call. = FALSE)
  if (is.numeric(basis) && is.null(dim(basis))) basis <- matrix(basis, ncol = 1L)
  if (!is.matrix(basis) || !is.numeric(basis) || nrow(basis) < 1L || ncol(basis) < 1L)
    stop("spike_history(): 'basis' must be a numeric matrix with one row per lag, e.g. raised_cosine_basis().", call. = FALSE)
  if (any(!is.finite(basis))) stop("spike_history(): 'basis' must be finite.", call. = FALSE)
  if (!is.numeric(first_lag) || length(first_lag) != 1L || !is.finite(first_lag) ||
      first_lag < 0 || first_lag != round(first_lag) || first_lag > .Machine$integer.max - nrow(basis))
    stop("spike_history(): 'first_lag' must be a whole number >= 0 (1 for a causal history term) that fits an integer.", call. = FALSE)
  seg <- segment_starts(trial, length(x), "spike_history()")
  B <- matrix(as.double(basis), nrow(basis), ncol(basis))
  H <- .Call(C_spikes_history, x, B, seg, as.integer(first_lag))
  cn <- colnames(basis)
  colnames(H) <- if (is.null(cn) || anyDuplicated(cn) || any(cn == "")) paste0("h", seq_len(ncol(B))) else cn
  attr(H, "basis") <- basis
  attr(H, "first_lag") <- as.integer(first_lag)
  attr(H, "binwidth") <- attr(basis, "binwidth")
  class(H) <- c("vb_history", "matrix", "array")
  H
}

# Deprecated alias (masked utils::history; not exported any more).
history <- function(x, basis, trial = NULL, first_lag = 1L) {
  .Deprecated("spike_history", package = "vbayes",
              msg = "vbayes:::history() is deprecated (it masked utils::history()); use spike_history().")
  spike_history(x, basis, trial, first_lag)
}

#' @importFrom stats makepredictcall
#' @export
makepredictcall.vb_history <- function(var, call) {
  f <- call[[1L]]
  fname <- if (is.call(f) && identical(f[[1L]], as.name("::"))) as.character(f[[3L]]) else
    if (is.name(f)) as.character(f) else ""
  if (!fname %in% c("spike_history", "history")) return(call)
  call <- match.call(spike_history, call)
  call$basis <- unclass_basis(attr(var, "basis"))
  call$first_lag <- attr(var, "first_lag")
  call
}

unclass_basis <- function(b) {
  if (is.null(dim(b))) b <- matrix(b, ncol = 1L)
  b
}

#' @export
print.vb_history <- function(x, ...) {
  y <- unclass(x)
  attributes(y) <- attributes(x)[c("dim", "dimnames")]
  print(y, ...)
  invisible(x)
}

# The call that model.frame() evaluates for term `lab` on new data: the
# predvars entry, with the basis stored at fitting (makepredictcall), or
# NULL when the terms carry none.
predvar_call <- function(tt, lab) {
  vars <- as.list(attr(tt, "variables"))[-1L]
  pv <- attr(tt, "predvars")
  if (is.null(pv)) return(NULL)
  pv <- as.list(pv)[-1L]
  lv <- vapply(vars, function(v) paste(deparse(v, width.cutoff = 500L), collapse = " "), "")
  i <- match(lab, lv)
  if (is.na(i) || i > length(pv) || !is.call(pv[[i]])) NULL else pv[[i]]
}

# 1L where a new trial (segment) starts, else 0L.
segment_starts <- function(trial, n, fn) {
  seg <- integer(n)
  if (n > 0L) seg[1L] <- 1L
  if (is.null(trial)) return(seg)
  if (length(trial) != n)
    stop(sprintf("%s: 'trial' has length %d but 'x' has length %d; give one trial label per bin.",
                 fn, length(trial), n), call. = FALSE)
  if (anyNA(trial)) stop(sprintf("%s: 'trial' contains missing values.", fn), call. = FALSE)
  if (is.factor(trial)) trial <- as.integer(trial)
  if (n > 1L) seg[-1L] <- as.integer(trial[-1L] != trial[-n])
  seg
}

# The spike_history() terms of a formula fit: label, coefficient indices, basis,
# first lag, bin width, the call, and whether x is the response itself.
history_terms <- function(fit) {
  if (!inherits(fit, "vbfit")) stop("expected a fit from vb().", call. = FALSE)
  if (is.null(fit$terms)) stop("this fit has no formula; history terms need a fit made by vb().", call. = FALSE)
  labs <- attr(fit$terms, "term.labels")
  env <- environment(fit$terms)
  resp <- if (attr(fit$terms, "response") == 1L) fit$terms[[2L]] else NULL
  cf <- names(fit$coefficients)
  out <- list()
  for (lab in labs) {
    e <- tryCatch(str2lang(lab), error = function(err) NULL)
    if (!is.call(e)) next
    f <- e[[1L]]
    fname <- if (is.call(f) && identical(f[[1L]], as.name("::"))) as.character(f[[3L]]) else
      if (is.name(f)) as.character(f) else ""
    if (!fname %in% c("spike_history", "history")) next
    mc <- match.call(spike_history, e)
    pv <- predvar_call(fit$terms, lab)
    if (!is.null(pv)) mc <- match.call(spike_history, pv)
    col <- fit$model[[lab]]
    basis <- attr(col, "basis")
    if (is.null(basis)) basis <- eval(mc$basis, fit$model, env)
    if (is.numeric(basis) && is.null(dim(basis))) basis <- matrix(basis, ncol = 1L)
    first_lag <- if (is.null(mc$first_lag)) 1L else as.integer(eval(mc$first_lag, fit$model, env))
    cn <- colnames(col)
    if (is.null(cn)) cn <- paste0("h", seq_len(ncol(basis)))
    idx <- match(paste0(lab, cn), cf)
    if (anyNA(idx)) stop(sprintf("could not find the coefficients of term '%s'.", lab), call. = FALSE)
    out[[lab]] <- list(label = lab, index = idx, basis = basis, first_lag = first_lag,
                       binwidth = attr(basis, "binwidth"), call = mc,
                       is_response = !is.null(resp) && identical(deparse(mc$x), deparse(resp)))
  }
  out
}

#' Posterior filters of history and coupling terms
#'
#' For every [spike_history()] term of a fit, the filter f = B beta (the basis times
#' the term's coefficients) at each lag, with its posterior mean B mu and
#' standard deviation sqrt(diag(B Sigma B')) under the Gaussian q, so the
#' credible band at each lag is exact for q.  On the rate scale the filter is
#' a gain exp(f): `plot(..., scale = "gain")`.
#'
#' @param fit A [vb()] fit with [spike_history()] terms.
#' @param level Credible level of the bands.
#' @return An object of class `vb_filters`: a named list (one element per
#'   history term) of data frames with columns `lag` (bins), `time` (lag times
#'   the basis' bin width, or `NA`), `estimate`, `sd`, `lower`, `upper`.
#' @seealso [plot.vb_filters()], [spike_history()].
#' @examples
#' B <- raised_cosine_basis(4, c(0.005, 0.04), 0.01, 0.005)
#' fit <- vb(spikes ~ stim + spike_history(spikes, B, trial), data = neuron[1:4000, ],
#'           family = poisson(), exposure = 0.005)
#' f <- filters(fit)
#' head(f[[1]])
#' plot(f)
#' @export
filters <- function(fit, level = 0.95) {
  check_level(level)
  ht <- history_terms(fit)
  if (length(ht) == 0L) stop("filters(): the fit has no spike_history() terms.", call. = FALSE)
  z <- qnorm(1 - (1 - level) / 2)
  out <- lapply(ht, function(h) {
    B <- h$basis
    L <- nrow(B)
    mu <- fit$coefficients[h$index]
    S <- fit$vcov[h$index, h$index, drop = FALSE]
    est <- drop(B %*% mu)
    sd <- sqrt(pmax(rowSums((B %*% S) * B), 0))
    lag <- h$first_lag + seq_len(L) - 1L
    data.frame(lag = lag, time = if (is.null(h$binwidth)) NA_real_ else lag * h$binwidth,
               estimate = est, sd = sd, lower = est - z * sd, upper = est + z * sd)
  })
  structure(out, level = level, class = "vb_filters")
}

#' @export
print.vb_filters <- function(x, ...) {
  cat(sprintf("Posterior filters (%g%% credible bands) of %d history term%s:\n",
              100 * attr(x, "level"), length(x), if (length(x) == 1L) "" else "s"))
  for (nm in names(x)) {
    f <- x[[nm]]
    sig <- sum(f$lower > 0 | f$upper < 0)
    cat(sprintf("  %s: lags %d-%d bins; range [%.3g, %.3g]; band excludes 0 at %d of %d lags\n",
                nm, min(f$lag), max(f$lag), min(f$estimate), max(f$estimate), sig, nrow(f)))
  }
  invisible(x)
}

#' Plot posterior filters
#'
#' One panel per history term: the posterior mean filter with its credible
#' band, against lag.
#' @param x A `vb_filters` object from [filters()].
#' @param which Terms to plot (names or indices); all by default.
#' @param scale `"log"` (the filter f, added to the log rate; reference line
#'   0) or `"gain"` (exp(f), the multiplicative effect on the rate; line 1).
#' @param truth Optional list of true filters (numeric vectors indexed by lag
#'   in bins), one per plotted term, drawn dashed.
#' @param ... Passed to [graphics::plot()].
#' @return `x`, invisibly.
#' @examples
#' B <- raised_cosine_basis(4, c(0.005, 0.04), 0.01, 0.005)
#' fit <- vb(spikes ~ stim + spike_history(spikes, B, trial), data = neuron[1:4000, ],
#'           family = poisson(), exposure = 0.005)
#' plot(filters(fit), scale = "gain")
#' @export
plot.vb_filters <- function(x, which = seq_along(x), scale = c("log", "gain"), truth = NULL, ...) {
  scale <- match.arg(scale)
  sel <- unclass(x)[which]
  if (length(sel) == 0L) stop("plot.vb_filters(): 'which' selects no filter.", call. = FALSE)
  if (!is.null(truth) && !is.list(truth)) truth <- list(truth)
  if (length(sel) > 1L) {
    k <- length(sel)
    op <- graphics::par(mfrow = if (k <= 3L) c(1L, k) else grDevices::n2mfrow(k),
                        mar = c(4, 4, 2, 1), cex.main = 0.8)
    on.exit(graphics::par(op))
  }
  tr <- if (scale == "gain") exp else identity
  for (i in seq_along(sel)) {
    f <- sel[[i]]
    ax <- lag_axis(f$lag, f$time)
    xx <- ax$x
    lo <- tr(f$lower); hi <- tr(f$upper); est <- tr(f$estimate)
    tv <- if (!is.null(truth) && length(truth) >= i && !is.null(truth[[i]])) truth[[i]] else NULL
    tl <- if (!is.null(tv)) seq_along(tv) else integer(0)
    txx <- tl * ax$per_bin
    yl <- range(lo, hi, if (scale == "gain") 1 else 0, if (!is.null(tv)) tr(tv))
    graphics::plot(xx, est, type = "n", ylim = yl, xlim = range(xx, txx),
                   xlab = ax$lab,
                   ylab = if (scale == "gain") "gain exp(filter)" else "filter (log rate)",
                   main = names(sel)[i], ...)
    graphics::polygon(c(xx, rev(xx)), c(lo, rev(hi)), col = grDevices::adjustcolor("steelblue", 0.3), border = NA)
    graphics::lines(xx, est, lwd = 2, col = "steelblue4")
    graphics::abline(h = if (scale == "gain") 1 else 0, col = "grey50")
    if (!is.null(tv)) graphics::lines(txx, tr(tv), lty = 2, lwd = 2)
  }
  invisible(x)
}

#' Bits per spike
#'
#' How much better the fitted model predicts spikes than a homogeneous Poisson
#' process: (LL_model - LL_null) / (N_spikes log 2), where the log-likelihoods
#' are over the bins of `newdata` (or of the fitted data), N_spikes is the
#' number of spikes there, LL_model uses the posterior mean coefficients
#' (plug-in), and the null rate per unit exposure is the mean rate of the
#' training data (`null = "train"`) or of `newdata` itself (`"test"`; the
#' null is then fitted to the test data, a stricter reference).  A Bernoulli
#' (`binomial()`) fit is compared with a constant spike probability instead.
#'
#' History terms are re-evaluated on `newdata`, so the model predicts each bin
#' from the observed past: give contiguous held-out data with the same
#' variables (and `trial`) as the training data.
#'
#' @param fit A `poisson()` (or 0/1 `binomial()`) fit from [vb()].
#' @param newdata Held-out data; the fitted data by default.
#' @param null `"train"` or `"test"`: where the null rate comes from.
#' @return A number, bits per spike, with attributes `loglik` (model, null)
#'   and `spikes`.
#' @examples
#' B <- raised_cosine_basis(4, c(0.005, 0.04), 0.01, 0.005)
#' fit <- vb(spikes ~ stim + spike_history(spikes, B, trial), data = neuron[1:4000, ],
#'           family = poisson(), exposure = 0.005)
#' bits_per_spike(fit, newdata = neuron[4001:8000, ])
#' @export
bits_per_spike <- function(fit, newdata, null = c("train", "test")) {
  null <- match.arg(null)
  if (!inherits(fit, "vbfit")) stop("bits_per_spike(): 'fit' must be a fit from vb().", call. = FALSE)
  fam <- fit$family$family
  if (!fam %in% c("poisson", "binomial"))
    stop("bits_per_spike(): needs a poisson() (or 0/1 binomial()) fit of spike counts.", call. = FALSE)
  if (fam == "binomial" && any(fit$prior.weights != 1))
    stop("bits_per_spike(): a binomial fit must be of 0/1 spikes (one trial per bin).", call. = FALSE)
  ytr <- fit[["y"]]
  etr <- if (is.null(fit$exposure)) rep(1, length(ytr)) else fit$exposure
  if (missing(newdata) || is.null(newdata)) {
    if (is.null(fit[["x"]])) stop("bits_per_spike(): this fit was made with x = FALSE; give 'newdata' (or refit with x = TRUE).", call. = FALSE)
    y <- ytr
    eta <- drop(fit[["x"]] %*% fit$coefficients) + fit$offset
    expo <- etr
  } else {
    if (is.null(fit$terms)) stop("bits_per_spike(): 'newdata' needs a fit made from a formula by vb().", call. = FALSE)
    d <- new_design(fit, newdata)
    eta <- drop(d$X %*% fit$coefficients) + d$offset
    mf <- model.frame(fit$terms, newdata, na.action = stats::na.pass, xlev = fit$xlevels)
    y <- model.response(mf)
    if (is.factor(y)) y <- as.numeric(y != levels(y)[1L])
    y <- as.numeric(y)
    expo <- rep(1, length(y))
    if (!is.null(fit$call$exposure))
      expo <- rep_len(eval(fit$call$exposure, newdata, environment(fit$terms)), length(y))
  }
  if (length(y) != length(eta) || any(!is.finite(y)) || any(!is.finite(eta)))
    stop("bits_per_spike(): 'newdata' gives missing or infinite responses or predictors; remove incomplete rows (keep the series contiguous).", call. = FALSE)
  nsp <- sum(y)
  if (nsp <= 0) stop("bits_per_spike(): there are no spikes in the data, so bits per spike is undefined.", call. = FALSE)
  if (fam == "poisson") {
    r0 <- if (null == "train") sum(ytr) / sum(etr) else nsp / sum(expo)
    lam0 <- r0 * expo
    ll_m <- sum(y * eta - exp(eta))
    ll_0 <- sum(y * log(lam0) - lam0)
  } else {
    p0 <- if (null == "train") mean(ytr) else mean(y)
    ll_m <- sum(y * eta - log1p(exp(eta)))   # log plogis(eta) = eta - log(1 + e^eta)
    ll_0 <- sum(y * log(p0) + (1 - y) * log1p(-p0))
  }
  structure((ll_m - ll_0) / (nsp * log(2)), loglik = c(model = ll_m, null = ll_0), spikes = nsp)
}

#' Simulate spike trains from a fitted history GLM
#'
#' Generates spikes bin by bin: the rate of bin t is exp(x_t' beta + offset +
#' sum_l h_l y_(t-l)), where h is the fitted post-spike filter (all
#' [spike_history()] terms of the response) applied to the spikes simulated so far,
#' within each trial.  Everything else (stimulus, coupling terms from other
#' neurons, exposure) is taken from `newdata` as observed.  Use it to check
#' that fitted filters are stable (no runaway excitation) and reproduce the
#' data's statistics, or refit to the simulated spikes to check recovery.
#'
#' Unlike [simulate.vbfit()], which draws each bin independently given the
#' observed past, this feeds simulated spikes back through the filter.
#'
#' @param fit A `poisson()` (or 0/1 `binomial()`) fit from [vb()] whose
#'   formula has a [spike_history()] term of the response.
#' @param newdata Data supplying every other variable (and `trial`); the
#'   fitted data (the `data` argument of the call) by default.  Its response
#'   column, if any, is ignored.
#' @param nsim Number of simulated trains.
#' @param coef `"mean"`: every simulation uses the posterior mean
#'   coefficients; `"draw"`: each uses its own draw from q.
#' @param seed Optional seed, as in [stats::simulate()].
#' @param max_count Cap on the expected count per bin; capped bins (a sign of
#'   an unstable, self-exciting filter) are counted and reported by a warning.
#' @return A data frame with `nsim` columns `sim_1`, ... of spike counts, one
#'   row per bin, with attribute `capped` (the number of capped bins).
#' @examples
#' B <- raised_cosine_basis(4, c(0.005, 0.04), 0.01, 0.005)
#' d <- neuron[1:4000, ]
#' fit <- vb(spikes ~ stim + spike_history(spikes, B, trial), data = d,
#'           family = poisson(), exposure = 0.005)
#' s <- simulate_spikes(fit, d, nsim = 2, seed = 1)
#' colSums(s); sum(d$spikes)
#' @export
simulate_spikes <- function(fit, newdata, nsim = 1, coef = c("mean", "draw"), seed = NULL,
                            max_count = 1e4) {
  coef <- match.arg(coef)
  nsim <- check_count(nsim, "nsim")
  if (!inherits(fit, "vbfit")) stop("simulate_spikes(): 'fit' must be a fit from vb().", call. = FALSE)
  fam <- fit$family$family
  if (!fam %in% c("poisson", "binomial"))
    stop("simulate_spikes(): needs a poisson() (or 0/1 binomial()) fit of spike counts.", call. = FALSE)
  if (!is.numeric(max_count) || length(max_count) != 1L || !(max_count > 0))
    stop("simulate_spikes(): 'max_count' must be one positive number.", call. = FALSE)
  ht <- history_terms(fit)
  own <- Filter(function(h) h$is_response, ht)
  if (length(own) == 0L)
    stop("simulate_spikes(): the formula has no spike_history() term of its response; use simulate() for a model without spike history.", call. = FALSE)
  resp <- fit$terms[[2L]]
  if (!is.name(resp))
    stop("simulate_spikes(): the response must be a plain variable name (e.g. spikes ~ ...).", call. = FALSE)
  env <- environment(fit$terms)
  if (missing(newdata) || is.null(newdata)) {
    if (is.null(fit$call$data)) stop("simulate_spikes(): give 'newdata'.", call. = FALSE)
    newdata <- eval(fit$call$data, env)
  }
  if (!is.data.frame(newdata)) newdata <- as.data.frame(newdata)
  n <- nrow(newdata)
  if (n < 1L) stop("simulate_spikes(): 'newdata' has no rows.", call. = FALSE)
  newdata[[as.character(resp)]] <- numeric(n)
  if (!is.null(seed)) set.seed(seed)
  d <- new_design(fit, newdata)
  X <- d$X
  for (h in own) X[, h$index] <- 0
  if (any(h0 <- vapply(own, function(h) h$first_lag < 1L, logical(1))))
    stop("simulate_spikes(): a spike_history() term of the response has first_lag = 0, so a bin would see its own count.", call. = FALSE)
  # trial structure from the response's history term(s)
  segs <- lapply(own, function(h) {
    tr <- if (is.null(h$call$trial)) NULL else eval(h$call$trial, newdata, env)
    segment_starts(tr, n, "simulate_spikes()")
  })
  if (length(segs) > 1L && !all(vapply(segs, identical, logical(1), segs[[1L]])))
    stop("simulate_spikes(): the response's spike_history() terms have different 'trial' arguments.", call. = FALSE)
  p <- length(fit$coefficients)
  beta <- if (coef == "mean") matrix(fit$coefficients, p, nsim) else q_sample(fit, nsim)$theta[seq_len(p), , drop = FALSE]
  eta0 <- X %*% beta + d$offset
  if (any(is.na(eta0)))
    stop("simulate_spikes(): 'newdata' gives missing predictors; remove incomplete rows (keep the series contiguous).", call. = FALSE)
  L <- max(vapply(own, function(h) h$first_lag + nrow(h$basis) - 1L, numeric(1)))
  hmat <- matrix(0, L, nsim)
  for (h in own) {
    rows <- h$first_lag + seq_len(nrow(h$basis)) - 1L
    hmat[rows, ] <- hmat[rows, ] + h$basis %*% beta[h$index, , drop = FALSE]
  }
  storage.mode(eta0) <- "double"
  res <- .Call(C_spikes_simulate, eta0, hmat, segs[[1L]],
               list(family = family_code(list(family = fam)), cap = as.double(max_count)))
  check_status(res$status, "simulate_spikes()")
  if (res$capped > 0L)
    warning(sprintf("simulate_spikes(): the expected count exceeded max_count = %g in %d bins; the fitted history filter is unstable (runaway excitation).",
                    max_count, res$capped), call. = FALSE)
  out <- as.data.frame(res$y)
  names(out) <- paste0("sim_", seq_len(nsim))
  attr(out, "capped") <- res$capped
  out
}
