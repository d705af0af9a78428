#' Tuning knobs of the variational engines
#'
#' Every knob is validated here, once, like [stats::glm.control()].
#'
#' @param maxit Maximum number of sweeps (CAVI) over all blocks.
#' @param tol Convergence tolerance on the relative change of the ELBO
#'   between sweeps.
#' @param quiet If `FALSE` (the default), runs longer than about a second
#'   report their progress as messages (`suppressMessages()` silences them
#'   too). `TRUE` silences progress only: warnings, such as non-convergence,
#'   are never silenced.
#' @param blocks For `approx = "block"`: the partition of the coefficients into
#'   blocks of a block-diagonal posterior covariance, as a list of character
#'   vectors of coefficient names or an integer vector of block labels, one per
#'   coefficient. `NULL` (default) uses one block per formula term.
#' @param binomial_method Variational objective for `binomial()`: `"gva"`
#'   (Gaussian variational approximation with E log(1 + e^eta) by Gauss-Hermite
#'   quadrature; the default and the tighter bound) or `"jj"` (the
#'   Jaakkola-Jordan / Polya-Gamma bound, closed-form CAVI).
#' @param gh_nodes Number of Gauss-Hermite nodes for `binomial_method = "gva"`.
#' @param estimator Stochastic gradient of the ELBO for `method = "sgvb"`:
#'   `"reparam"` (pathwise, needs the gradient of the log density) or
#'   `"score"` (score function / REINFORCE with a leave-one-out baseline).
#' @param samples Monte Carlo draws per SGVB step; `NULL` means 1 for
#'   `"reparam"` and 8 for `"score"`.
#' @param step_size Adam step size of SGVB, measured in posterior standard
#'   deviations for locations (and in log units for scales); `NULL` (default)
#'   chooses it by short trial runs over a grid from 1 down to 0.003. For a
#'   GLM (`vb(method = "sgvb")` with the `"reparam"` estimator) SGVB takes
#'   Newton-like steps instead of Adam's, whitened by the curvature at the
#'   mode, with the quadratic model of the log density integrated exactly as
#'   a control variate; there `step_size` is the fraction of a Newton step
#'   (default 1), halved when a window's smoothed ELBO falls.
#' @param adapt_iter Steps of each trial run of the step-size search.
#' @param sgvb_maxit Maximum number of SGVB steps.
#' @param sgvb_tol SGVB's smoothed ELBO (the mean of a window of per-step
#'   estimates) "stalls" when its relative change between windows is below
#'   `sgvb_tol` or within two Monte Carlo standard errors; a stall halves the
#'   step size.
#' @param window Steps per window of the smoothed ELBO (for a GLM's
#'   Newton-like steps, max(5, `window` / 20)).
#' @param step_decays Minimum number of step-size halvings (each restarting
#'   from the window's averaged iterate) before the final averaging phase;
#'   halving also continues until the step size is at most
#'   min(0.03, 0.1 / sqrt(number of variational parameters)).
#' @param elbo_samples The most draws used to estimate the final ELBO of an
#'   SGVB fit (draws are added in blocks until the standard error is below
#'   0.025 sqrt(1000 / elbo_samples) nats).
#' @param baseline For `estimator = "score"`: subtract the leave-one-out
#'   baseline (`TRUE`, default) or not.
#' @param stl For `estimator = "reparam"` with a full-rank q (meanfield
#'   always uses the plain estimator): use the path derivative of
#'   log p - log q ("sticking the landing", Roeder, Wu & Duvenaud 2017;
#'   `TRUE`, default), whose variance vanishes as q approaches a Gaussian
#'   posterior, instead of the gradient of log p plus the exact entropy
#'   gradient.
#' @param precision SGVB's final phase averages the iterates (Polyak) until
#'   the batch-means standard error of every location is below `precision`
#'   posterior standard deviations (and of every log scale below
#'   `precision`); with a GLM's Newton-like steps, in q's own standard
#'   deviations, and the standard error is also bounded through the averaged
#'   iterates' own autocorrelated variance.
#' @param joint_means For `approx = "meanfield"` or `"block"` (CAVI): with at
#'   most this many coefficients, each sweep also takes a joint Newton step on
#'   all the means (cost n p^2), which makes coordinate ascent converge in a
#'   few sweeps on strongly correlated posteriors. `0` turns it off (pure
#'   O(np) sweeps, for very many coefficients). For [vb_lds()] with
#'   `approx = "meanfield"`, any value above 0 takes joint steps on all the
#'   latent factors (block-tridiagonal Newton for the means), `0` plain
#'   coordinate sweeps.
#' @return A list of class `vb_control`.
#' @examples
#' vb_control(tol = 1e-10)
#' @export
vb_control <- function(maxit = 500L, tol = 1e-8, quiet = FALSE, blocks = NULL,
                       binomial_method = c("gva", "jj"), gh_nodes = 32L,
                       estimator = c("reparam", "score"), samples = NULL, step_size = NULL,
                       adapt_iter = 50L, sgvb_maxit = 50000L, sgvb_tol = 1e-6, window = 100L,
                       step_decays = 0L, elbo_samples = 1000L, baseline = TRUE,
                       stl = TRUE, precision = 0.015, joint_means = 500L) {
  # whole numbers must fit a C int with room for one more (the engines count to maxit + 1)
  num1 <- function(x, nm, lower, int = FALSE) {
    upper <- if (int) .Machine$integer.max - 1L else Inf
    if (!is.numeric(x) || length(x) != 1L || !is.finite(x) || x < lower || x > upper ||
        (int && x != round(x)))
      stop(sprintf("vb_control(): '%s' must be a single %s >= %s%s.", nm,
                   if (int) "whole number" else "number", format(lower),
                   if (int) sprintf(" and at most %s", format(upper, big.mark = ",")) else ""),
           call. = FALSE)
    x
  }
  maxit <- as.integer(num1(maxit, "maxit", 1, TRUE))
  num1(tol, "tol", 0)
  if (tol <= 0) stop("vb_control(): 'tol' must be positive.", call. = FALSE)
  if (!is.logical(quiet) || length(quiet) != 1L || is.na(quiet))
    stop("vb_control(): 'quiet' must be TRUE or FALSE.", call. = FALSE)
  if (!is.null(blocks) && !is.list(blocks) && !is.numeric(blocks))
    stop("vb_control(): 'blocks' must be NULL, a list of coefficient names, or block labels.", call. = FALSE)
  binomial_method <- match.arg(binomial_method)
  gh_nodes <- as.integer(num1(gh_nodes, "gh_nodes", 2, TRUE))
  estimator <- match.arg(estimator)
  if (!is.null(samples)) samples <- as.integer(num1(samples, "samples", 1, TRUE))
  if (!is.null(step_size)) {
    num1(step_size, "step_size", 0)
    if (step_size <= 0) stop("vb_control(): 'step_size' must be positive (or NULL for the automatic search).", call. = FALSE)
  }
  adapt_iter <- as.integer(num1(adapt_iter, "adapt_iter", 2, TRUE))
  sgvb_maxit <- as.integer(num1(sgvb_maxit, "sgvb_maxit", 1, TRUE))
  num1(sgvb_tol, "sgvb_tol", 0)
  window <- as.integer(num1(window, "window", 2, TRUE))
  step_decays <- as.integer(num1(step_decays, "step_decays", 0, TRUE))
  elbo_samples <- as.integer(num1(elbo_samples, "elbo_samples", 2, TRUE))
  if (!is.logical(baseline) || length(baseline) != 1L || is.na(baseline))
    stop("vb_control(): 'baseline' must be TRUE or FALSE.", call. = FALSE)
  if (!is.logical(stl) || length(stl) != 1L || is.na(stl))
    stop("vb_control(): 'stl' must be TRUE or FALSE.", call. = FALSE)
  num1(precision, "precision", 0)
  if (precision <= 0) stop("vb_control(): 'precision' must be positive.", call. = FALSE)
  joint_means <- as.integer(num1(joint_means, "joint_means", 0, TRUE))
  structure(list(maxit = maxit, tol = tol, quiet = quiet, blocks = blocks,
                 binomial_method = binomial_method, gh_nodes = gh_nodes,
                 estimator = estimator, samples = samples, step_size = step_size,
                 adapt_iter = adapt_iter, sgvb_maxit = sgvb_maxit, sgvb_tol = sgvb_tol,
                 window = window, step_decays = step_decays, elbo_samples = elbo_samples,
                 baseline = baseline, stl = stl, precision = precision,
                 joint_means = joint_means),
            class = "vb_control")
}
