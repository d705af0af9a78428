# Helpers shared across the package: the engine status codes, argument
# checks and small numerical utilities.

# The status codes every C engine returns (src/vbayes.h, enum VB_*), and the
# one place they become sentences.  `converged` is status == 0 and nothing else.
vb_status_codes <- c(ok = 0L, maxit = 1L, stalled = 2L, not_pd = 3L, nonfinite = 4L,
                     decreased = 5L, interrupted = 6L, lapack_arg = 7L, bad_input = 8L)

vb_status_message <- function(status, what = "vb()", iterations = NA, tol = NA, knob = "maxit") {
  status <- as.integer(status)
  switch(names(vb_status_codes)[match(status, vb_status_codes)],
    ok = sprintf("%s: converged.", what),
    maxit = sprintf("%s: not converged after %s iterations (the criterion at tol = %g was not met); increase %s.",
                    what, format(iterations), tol,
                    if (grepl("(", knob, fixed = TRUE)) knob else sprintf("vb_control(%s)", knob)),
    stalled = sprintf("%s: not converged: the step search found no step that increases the ELBO after %s iterations; the optimum was not reached (try another approx or starting values).",
                      what, format(iterations)),
    not_pd = sprintf("%s: not converged: a posterior precision was not positive definite after %s iterations; check for an improper or extreme prior, or a rank-deficient design.",
                     what, format(iterations)),
    nonfinite = sprintf("%s: not converged: the ELBO became non-finite after %s iterations; check the data, the priors and the model's support.",
                        what, format(iterations)),
    decreased = sprintf("%s: not converged: the ELBO decreased after %s iterations (a monotone algorithm stopped at a numerical floor).",
                        what, format(iterations)),
    interrupted = sprintf("%s: interrupted by the user.", what),
    lapack_arg = sprintf("%s: LAPACK rejected an argument (an internal error; please report it).", what),
    bad_input = sprintf("%s: a value reached the engine that it cannot evaluate (non-finite or out of range).", what),
    sprintf("%s: unknown engine status %s (internal error).", what, format(status)))
}

# Act on an engine result: errors for an interruption or an internal failure,
# a warning (never silenced by `quiet`) when the fit did not converge.
# Returns TRUE when converged.
check_status <- function(status, what = "vb()", iterations = NA, tol = NA, knob = "maxit") {
  status <- as.integer(status)
  # a progress message whose handler jumped (tryCatch(message = ), an error):
  # the engine stopped cleanly; now continue that jump (src/util.c)
  if (identical(status, vb_status_codes[["interrupted"]])) .Call(C_vb_resume_unwind, status)
  if (status %in% vb_status_codes[c("interrupted", "lapack_arg", "bad_input")])
    stop(vb_status_message(status, what, iterations, tol, knob), call. = FALSE)
  if (status != 0L) warning(vb_status_message(status, what, iterations, tol, knob), call. = FALSE)
  status == 0L
}

# The R twin of vb_tol_met() (src/util.c): the one convergence predicate, for
# loops that run in R (the vb_lds() EM).
tol_met <- function(old, new, tol)
  is.finite(old) && is.finite(new) && abs(new - old) <= tol * (abs(new) + tol)

# A vb_control() object from a vb_control() object or a plain list of knobs.
as_vb_control <- function(control, what = "control") {
  if (inherits(control, "vb_control")) return(control)
  if (is.null(control)) return(vb_control())
  if (!is.list(control) || (length(control) && is.null(names(control))))
    stop(sprintf("'%s' must be vb_control(...) or a named list of its arguments.", what), call. = FALSE)
  do.call(vb_control, control)
}

# A positive whole number that fits an R integer.
check_count <- function(n, nm, max = .Machine$integer.max - 1L) {
  if (!is.numeric(n) || length(n) != 1L || !is.finite(n) || n < 1 || n != round(n) || n > max)
    stop(sprintf("'%s' must be a positive whole number (at most %s).", nm, format(max, big.mark = ",")),
         call. = FALSE)
  as.integer(n)
}

softmax <- function(x) {
  e <- exp(x - max(x))
  e / sum(e)
}

# A credible or interval level strictly between 0 and 1.
check_level <- function(level) {
  if (!is.numeric(level) || length(level) != 1L || !(level > 0 && level < 1))
    stop("'level' must be a single number between 0 and 1.", call. = FALSE)
}

# ---- Gaussian q ---------------------------------------------------------------

# Upper Cholesky factor of a covariance, or a clear error.
chol_psd <- function(S) {
  R <- tryCatch(chol(S), error = function(e) NULL)
  if (is.null(R)) stop("the posterior covariance is not positive definite.", call. = FALSE)
  R
}

# S draws from N(mu, Sigma), one per column, and their log densities:
# theta = mu + R'z with R'R = Sigma, log q = log N(z; 0, I) - log|R|.
gaussian_q_sample <- function(mu, Sigma, S) {
  p <- length(mu)
  R <- if (p > 0) chol_psd(Sigma) else matrix(0, 0, 0)
  Z <- matrix(stats::rnorm(p * S), p, S)
  theta <- mu + crossprod(R, Z)
  rownames(theta) <- names(mu)
  logq <- -0.5 * colSums(Z^2) - 0.5 * p * log(2 * pi) - sum(log(diag(R)))
  list(theta = theta, logq = logq)
}

# ---- printing helpers -------------------------------------------------------

# Why an engine stopped, as a short phrase for print methods (the warnings
# use vb_status_message()).
vb_status_short <- function(status) {
  switch(names(vb_status_codes)[match(as.integer(status), vb_status_codes)],
    ok = "converged",
    maxit = "the iteration limit was reached",
    stalled = "the step search found no improving step",
    not_pd = "a posterior precision was not positive definite",
    nonfinite = "the ELBO became non-finite",
    decreased = "the ELBO decreased",
    interrupted = "interrupted",
    "the engine reported an internal error")
}

# "Converged in 12 iterations" or "NOT converged after 12 iterations (why)".
convergence_line <- function(x) {
  it <- x[["iterations"]]
  if (isTRUE(x[["converged"]])) return(sprintf("Converged in %s iterations", format(it)))
  st <- x[["status"]]
  why <- if (!is.null(st) && length(st) == 1L && !is.na(st) && st != 0L)
    sprintf(" (%s)", vb_status_short(st)) else ""
  sprintf("NOT converged after %s iterations%s", format(it), why)
}
