#' Tuning knobs of the variational engines
#'
#' Every knob is validated here, once, like [stats::glm.control()].
#'
#' @param maxit Maximum number of sweeps (CAVI) over all blocks.
#' @param tol Convergence tolerance on the relative change of the ELBO
#'   between sweeps.
#' @param quiet If `FALSE` (the default), runs longer than about a second
#'   print their progress.
#' @param blocks For `approx = "block"`: the partition of the coefficients into
#'   blocks of a block-diagonal posterior covariance, as a list of character
#'   vectors of coefficient names or an integer vector of block labels, one per
#'   coefficient. `NULL` (default) uses one block per formula term.
#' @param binomial_method Variational objective for `binomial()`: `"gva"`
#'   (Gaussian variational approximation with E log(1 + e^eta) by Gauss-Hermite
#'   quadrature; the default and the tighter bound) or `"jj"` (the
#'   Jaakkola-Jordan / Polya-Gamma bound, closed-form CAVI).
#' @param gh_nodes Number of Gauss-Hermite nodes for `binomial_method = "gva"`.
#' @return A list of class `vb_control`.
#' @examples
#' vb_control(tol = 1e-10)
#' @export
vb_control <- function(maxit = 500L, tol = 1e-8, quiet = FALSE, blocks = NULL,
                       binomial_method = c("gva", "jj"), gh_nodes = 32L) {
  num1 <- function(x, nm, lower, int = FALSE) {
    if (!is.numeric(x) || length(x) != 1L || !is.finite(x) || x < lower || (int && x != round(x)))
      stop(sprintf("vb_control(): '%s' must be a single %s >= %s.", nm,
                   if (int) "whole number" else "number", format(lower)), call. = FALSE)
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
  structure(list(maxit = maxit, tol = tol, quiet = quiet, blocks = blocks,
                 binomial_method = binomial_method, gh_nodes = gh_nodes),
            class = "vb_control")
}
