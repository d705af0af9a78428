#' Coupled Poisson GLMs of a population, with ARD on every coupling filter
#'
#' Fits, for every neuron i of a simultaneously recorded population, the
#' Poisson GLM
#' log rate_i(t) = b_i + stimulus terms + (self-history filter * y_i)(t) +
#' sum_{j != i} (coupling filter_ij * y_j)(t),
#' with y_i(t) ~ Poisson(binwidth * rate_i(t)), each filter a weighted sum of
#' the columns of `basis` applied to the past spikes (as [spike_history()] builds
#' them). Every filter, and every stimulus column, is one group of an [ard()]
#' prior, so a coupling the data do not support is shrunk away and the
#' connectivity is found by the evidence. The fits run through
#' \pkg{future.apply} on the user's `plan()` (one neuron per task, progress
#' through \pkg{progressr}, reproducible seeds), like [vb_many()].
#'
#' The connectivity summary of the filter from neuron j to neuron i is its
#' gain, the filter summed over lags (the change in log rate_i, integrated
#' over the filter's support, per spike of j); its posterior mean and sd are
#' exact under the Gaussian q(beta).
#'
#' @param spikes A bins x neurons matrix of spike counts (non-negative
#'   integers), column names naming the neurons.
#' @param covariates Optional stimulus or other covariates: a numeric matrix
#'   or data frame with one row per bin; each column is one ARD group.
#' @param basis A lags x K basis matrix for the self-history and coupling
#'   filters, e.g. [raised_cosine_basis()].
#' @param binwidth Bin width Delta in seconds (the Poisson exposure); by
#'   default the `binwidth` attribute of `basis`.
#' @param trial Optional trial label per bin: filters do not reach across
#'   trials.
#' @param prior An [ard()] prior (its `groups` are set here).
#' @param prior_intercept Prior for each neuron's intercept.
#' @param approx,control As in [vb()].
#' @param keep_fits Keep every neuron's fit.
#' @return An object of class `vb_population`: `gain`, `gain_sd`, `lower`,
#'   `upper` (95% credible bounds), `E_alpha`, `relevance` — neurons x neurons
#'   matrices with entry `[i, j]` for the filter from j (column) to i (row),
#'   the diagonal being the self-history filter; `filters`, per neuron the
#'   filter coefficients; `units` (per-neuron ELBO, convergence, time, error);
#'   `elbo` (the sum over neurons); `fits`; `basis`, `binwidth`.
#' @examples
#' set.seed(2)
#' B <- raised_cosine_basis(2, c(0.005, 0.02), 0.01, 0.005)
#' Y <- matrix(rpois(3 * 2000, 0.1), 2000, 3, dimnames = list(NULL, c("a", "b", "c")))
#' pop <- vb_population(Y, basis = B)
#' round(pop$gain, 2)
#' @export
vb_population <- function(spikes, covariates = NULL, basis, binwidth = attr(basis, "binwidth"), trial = NULL,
                          prior = ard(), prior_intercept = normal(0, 10), approx = c("fullrank", "block", "meanfield"),
                          control = vb_control(), keep_fits = TRUE) {
  approx <- match.arg(approx)
  control <- as_vb_control(control)
  if (is.data.frame(spikes)) spikes <- as.matrix(spikes)
  if (!is.matrix(spikes) || !is.numeric(spikes) || ncol(spikes) < 2L || nrow(spikes) < 2L)
    stop("vb_population(): 'spikes' must be a numeric matrix of counts, bins x neurons, with at least two neurons.",
         call. = FALSE)
  if (any(!is.finite(spikes)) || any(spikes < 0) || any(spikes != round(spikes)))
    stop("vb_population(): 'spikes' must hold non-negative whole numbers (spike counts), with no NA or infinite values.",
         call. = FALSE)
  N <- ncol(spikes); Tn <- nrow(spikes)
  nm <- colnames(spikes)
  if (is.null(nm) || anyDuplicated(nm) || any(nm == "")) nm <- paste0("n", seq_len(N))
  colnames(spikes) <- nm
  if (missing(basis) || !is.matrix(basis) || !is.numeric(basis) || any(!is.finite(basis)) || !length(basis))
    stop("vb_population(): 'basis' must be a finite numeric matrix, lags x basis functions (raised_cosine_basis()).",
         call. = FALSE)
  if (is.null(binwidth) || !is.numeric(binwidth) || length(binwidth) != 1L || !is.finite(binwidth) || binwidth <= 0)
    stop("vb_population(): 'binwidth' must be one positive number (seconds per bin); the basis carries none.",
         call. = FALSE)
  if (!inherits(prior, "vb_ard")) stop("vb_population(): 'prior' must be ard(shape, rate).", call. = FALSE)
  if (!is.null(covariates)) {
    covariates <- as.matrix(covariates)
    if (!is.numeric(covariates) || nrow(covariates) != Tn || any(!is.finite(covariates)))
      stop(sprintf("vb_population(): 'covariates' must be finite numbers with one row per bin (%d).", Tn), call. = FALSE)
    if (is.null(colnames(covariates))) colnames(covariates) <- paste0("s", seq_len(ncol(covariates)))
  }
  seg <- segment_starts(trial, Tn, "vb_population()")
  K <- ncol(basis)
  B <- matrix(as.double(basis), nrow(basis), K)
  # every neuron's filtered past, once: bins x (N K), columns "j.k"
  H <- do.call(cbind, lapply(seq_len(N), function(j) {
    h <- .Call(C_spikes_history, as.double(spikes[, j]), B, seg, 1L)
    colnames(h) <- paste0(nm[j], ".h", seq_len(K))
    h
  }))
  X <- cbind("(Intercept)" = 1, covariates, H)
  groups <- c(if (!is.null(covariates)) colnames(covariates), rep(nm, each = K))

  spec <- list(X = X, spikes = spikes, groups = groups, prior = prior, prior_intercept = prior_intercept,
               approx = approx, control = control, binwidth = binwidth, keep = keep_fits,
               progress = progressr::progressor(steps = N))
  res <- future.apply::future_lapply(seq_len(N), population_unit, spec = spec, future.seed = TRUE)
  names(res) <- nm
  population_result(res, nm, B, K, binwidth, colnames(covariates))
}

population_unit <- function(i, spec) {
  t0 <- proc.time()[["elapsed"]]
  warns <- character(0)
  pr <- spec$prior
  pr$groups <- spec$groups
  f <- tryCatch(withCallingHandlers(
    vb_fit(spec$X, spec$spikes[, i], family = stats::poisson(), exposure = rep(spec$binwidth, nrow(spec$X)),
           prior = pr, prior_intercept = spec$prior_intercept, approx = spec$approx, control = spec$control),
    warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") }),
    error = function(e) e)
  spec$progress()
  err <- if (inherits(f, "error")) conditionMessage(f) else NA_character_
  if (inherits(f, "error")) f <- NULL
  list(fit = f, time = proc.time()[["elapsed"]] - t0,
       warning = if (length(warns)) paste(unique(warns), collapse = " | ") else NA_character_, error = err)
}

population_result <- function(res, nm, B, K, binwidth, cov_names) {
  N <- length(nm)
  blank <- matrix(NA_real_, N, N, dimnames = list(to = nm, from = nm))
  gain <- gain_sd <- ea <- rel <- blank
  w <- colSums(B) # gain of a filter = sum over lags = w' beta
  filters <- vector("list", N)
  names(filters) <- nm
  for (i in seq_len(N)) {
    f <- res[[i]]$fit
    if (is.null(f)) next
    for (j in seq_len(N)) {
      idx <- match(paste0(nm[j], ".h", seq_len(K)), names(f$coefficients))
      gain[i, j] <- sum(w * f$coefficients[idx])
      gain_sd[i, j] <- sqrt(max(drop(crossprod(w, f$vcov[idx, idx, drop = FALSE] %*% w)), 0))
      r <- f$ard[match(nm[j], f$ard$group), ]
      ea[i, j] <- r$E_alpha
      rel[i, j] <- r$relevance
    }
    filters[[i]] <- matrix(f$coefficients[(length(cov_names) + 2L):length(f$coefficients)], K, N,
                           dimnames = list(paste0("h", seq_len(K)), nm))
  }
  units <- data.frame(neuron = nm,
                      elbo = vapply(res, function(r) if (is.null(r$fit)) NA_real_ else r$fit$elbo, numeric(1)),
                      converged = vapply(res, function(r) if (is.null(r$fit)) NA else isTRUE(r$fit$converged), logical(1)),
                      time = vapply(res, `[[`, numeric(1), "time"),
                      warning = vapply(res, `[[`, character(1), "warning"),
                      error = vapply(res, `[[`, character(1), "error"), row.names = NULL, stringsAsFactors = FALSE)
  failed <- !is.na(units$error)
  if (any(failed))
    warning(sprintf("vb_population(): the fits of %d of %d neurons failed (%s): %s", sum(failed), N,
                    many_list(nm[failed]), units$error[failed][1L]), call. = FALSE)
  if (any(!is.na(units$warning)))
    warning(sprintf("vb_population(): the fits of %d neurons warned (%s): %s", sum(!is.na(units$warning)),
                    many_list(nm[!is.na(units$warning)]), units$warning[!is.na(units$warning)][1L]), call. = FALSE)
  structure(list(gain = gain, gain_sd = gain_sd, lower = gain - 1.96 * gain_sd, upper = gain + 1.96 * gain_sd,
                 E_alpha = ea, relevance = rel, filters = filters, units = units,
                 elbo = sum(units$elbo), fits = lapply(res, `[[`, "fit"), basis = B, binwidth = binwidth),
            class = "vb_population")
}

#' @export
print.vb_population <- function(x, digits = 3L, ...) {
  N <- nrow(x$gain)
  cat(sprintf("Coupled Poisson GLMs of %d neurons (ARD on every filter); ELBO %s\n", N,
              format(x$elbo, digits = digits + 4L)))
  off <- row(x$gain) != col(x$gain)
  credible <- off & is.finite(x$lower) & (x$lower > 0 | x$upper < 0)
  cat(sprintf("%d of %d coupling filters have a 95%% credible gain excluding 0.\n", sum(credible), sum(off)))
  cat("Filter gains (row: to, column: from; diagonal: self-history):\n")
  print(round(x$gain, digits))
  invisible(x)
}

#' @export
elbo.vb_population <- function(object, ...) object$elbo

#' @export
coef.vb_population <- function(object, ...) object$gain

#' Plot a population fit
#'
#' `"matrix"`: the connectivity as an image of filter gains (row: to,
#' column: from), credible couplings (95% interval excluding 0) marked.
#' `"filters"`: the coupling filters into one neuron over lags, with 95%
#' bands.
#'
#' @param x A [vb_population()] fit.
#' @param what `"matrix"` or `"filters"`.
#' @param neuron With `"filters"`: the receiving neuron (name or index).
#' @param ... Passed to the plotting functions.
#' @return The plotted data, invisibly.
#' @export
plot.vb_population <- function(x, what = c("matrix", "filters"), neuron = 1L, ...) {
  what <- match.arg(what)
  nm <- rownames(x$gain); N <- length(nm)
  if (what == "matrix") {
    g <- x$gain
    lim <- max(abs(g), na.rm = TRUE)
    if (!is.finite(lim) || lim == 0) lim <- 1
    cols <- grDevices::hcl.colors(41, "Blue-Red 3")
    op <- graphics::par(mar = c(5, 5, 4, 6))
    on.exit(graphics::par(op))
    graphics::image(seq_len(N), seq_len(N), t(g[N:1, , drop = FALSE]), zlim = c(-lim, lim), col = cols,
                    axes = FALSE, xlab = "from (presynaptic)", ylab = "to", main = "Filter gains (log rate per spike)", ...)
    graphics::axis(1, seq_len(N), nm, las = 2)
    graphics::axis(2, seq_len(N), rev(nm), las = 1)
    cr <- which(is.finite(x$lower) & (x$lower > 0 | x$upper < 0), arr.ind = TRUE)
    if (nrow(cr)) graphics::points(cr[, 2], N + 1 - cr[, 1], pch = 8, cex = 0.8)
    graphics::box()
    lev <- seq(-lim, lim, length.out = 5)
    graphics::legend("topright", inset = c(-0.22, 0), xpd = NA, fill = cols[c(1, 11, 21, 31, 41)],
                     legend = format(lev, digits = 2), bty = "n", title = "gain")
    return(invisible(list(gain = g, credible = cr)))
  }
  i <- if (is.character(neuron)) match(neuron, nm) else as.integer(neuron)
  if (length(i) != 1L || is.na(i) || i < 1L || i > N)
    stop("plot.vb_population(): 'neuron' must name or index one neuron.", call. = FALSE)
  f <- x$fits[[i]]
  if (is.null(f)) stop("plot.vb_population(): that neuron's fit failed or was not kept.", call. = FALSE)
  lag <- seq_len(nrow(x$basis)) * x$binwidth * 1000
  K <- ncol(x$basis)
  curves <- lapply(seq_len(N), function(j) {
    idx <- match(paste0(nm[j], ".h", seq_len(K)), names(f$coefficients))
    m <- drop(x$basis %*% f$coefficients[idx])
    s <- sqrt(pmax(rowSums((x$basis %*% f$vcov[idx, idx, drop = FALSE]) * x$basis), 0))
    data.frame(from = nm[j], lag_ms = lag, filter = m, lower = m - 1.96 * s, upper = m + 1.96 * s)
  })
  rng <- range(unlist(lapply(curves, function(d) c(d$lower, d$upper))))
  cols <- grDevices::hcl.colors(N, "Dark 3")
  graphics::plot(NA, xlim = range(lag), ylim = rng, xlab = "lag (ms)", ylab = "filter (log rate)",
                 main = sprintf("Filters into %s (95%% bands)", nm[i]), ...)
  graphics::abline(h = 0, lty = 3)
  for (j in seq_len(N)) {
    d <- curves[[j]]
    graphics::polygon(c(d$lag_ms, rev(d$lag_ms)), c(d$lower, rev(d$upper)), border = NA,
                      col = grDevices::adjustcolor(cols[j], 0.25))
    graphics::lines(d$lag_ms, d$filter, col = cols[j], lwd = 2)
  }
  graphics::legend("topright", legend = paste("from", nm), col = cols, lwd = 2, bty = "n")
  invisible(do.call(rbind, curves))
}
