#' Evidence lower bound of a fit
#'
#' `elbo()` returns the final ELBO, a lower bound on the log evidence log p(y).
#' With `terms = TRUE` it returns the decomposition
#' ELBO = E_q log p(y | theta) - KL(q || prior).
#'
#' @param object A fitted model (`vbfit`, or any object with an `elbo` field).
#' @param terms If `TRUE`, return `c(elbo, loglik, kl)`.
#' @param ... Unused.
#' @return A number, or a named vector with `terms = TRUE`.
#' @examples
#' fit <- vb(mpg ~ wt, data = mtcars)
#' elbo(fit)
#' elbo(fit, terms = TRUE)
#' @export
elbo <- function(object, ...) UseMethod("elbo")

#' @rdname elbo
#' @export
elbo.default <- function(object, terms = FALSE, ...) {
  if (is.null(object$elbo)) stop("this object carries no ELBO.", call. = FALSE)
  if (terms && !is.null(object$elbo_terms)) object$elbo_terms else object$elbo
}

#' Draws from the approximate posterior
#'
#' @param object A fitted model.
#' @param n Number of draws.
#' @param ... Unused.
#' @return An `n` x p matrix of coefficient draws from q; gaussian models add
#'   a column `sigma` (the noise standard deviation).
#' @examples
#' fit <- vb(mpg ~ wt, data = mtcars)
#' head(draws(fit, 5))
#' @export
draws <- function(object, n = 1000, ...) UseMethod("draws")

#' @rdname draws
#' @export
draws.vbfit <- function(object, n = 1000, ...) {
  n <- check_count(n, "n")
  th <- q_sample(object, n)$theta
  out <- t(th)
  if (identical(object$family$family, "gaussian")) {
    out[, ncol(out)] <- exp(-out[, ncol(out)] / 2)
    colnames(out) <- c(names(object$coefficients), "sigma")
  } else colnames(out) <- names(object$coefficients)
  out
}

# Draws of theta (coefficients, and log tau for gaussian) from q, one per
# column, with log q at each draw: the interface of diagnostics and SGVB.
q_sample <- function(fit, S) {
  # SGVB fits keep their joint q (gaussian: over beta and log tau) in $sgvb
  q <- if (is.null(fit$sgvb)) list(mu = fit$coefficients, Sigma = fit$vcov) else fit$sgvb
  mu <- q$mu; p <- length(mu)
  R <- if (p > 0) chol_psd(q$Sigma) else matrix(0, 0, 0)
  Z <- matrix(rnorm(p * S), p, S)
  theta <- mu + crossprod(R, Z)
  logq <- -0.5 * colSums(Z^2) - 0.5 * p * log(2 * pi) - sum(log(diag(R)))
  if (!is.null(fit$tau)) {
    A <- fit$tau[["shape"]]; B <- fit$tau[["rate"]]
    tau <- stats::rgamma(S, A, B)
    theta <- rbind(theta, log(tau))
    logq <- logq + stats::dgamma(tau, A, B, log = TRUE) + log(tau)
  }
  list(theta = theta, logq = logq)
}

# log p(y, theta) at the columns of theta (the C log-joint contract).
log_joint <- function(fit, theta) {
  if (!is.null(fit$target)) return(apply(theta, 2L, fit$target)) # vb_density()
  .Call(C_glm_log_joint, fit_model(fit), theta)$value
}

chol_psd <- function(S) {
  R <- tryCatch(chol(S), error = function(e) NULL)
  if (is.null(R)) stop("the posterior covariance is not positive definite.", call. = FALSE)
  R
}

#' @export
vcov.vbfit <- function(object, ...) object$vcov

#' @export
nobs.vbfit <- function(object, ...) sum(object$prior.weights != 0)

#' Credible intervals from the approximate posterior
#'
#' Equal-tailed intervals of the Gaussian q for each coefficient.
#' @param object A `vbfit`.
#' @param parm Coefficients (names or indices); all by default.
#' @param level Credible level.
#' @param ... Unused.
#' @return A matrix with one row per coefficient.
#' @examples
#' confint(vb(mpg ~ wt + hp, data = mtcars))
#' @export
confint.vbfit <- function(object, parm, level = 0.95, ...) {
  cf <- object$coefficients
  sd <- sqrt(diag(object$vcov))
  if (missing(parm)) parm <- names(cf)
  check_level(level)
  a <- (1 - level) / 2
  z <- qnorm(c(a, 1 - a))
  ci <- cbind(cf + z[1] * sd, cf + z[2] * sd)
  dimnames(ci) <- list(names(cf), paste(format(100 * c(a, 1 - a), trim = TRUE), "%"))
  ci[parm, , drop = FALSE]
}

check_level <- function(level) {
  if (!is.numeric(level) || length(level) != 1L || !(level > 0 && level < 1))
    stop("'level' must be a single number between 0 and 1.", call. = FALSE)
}

#' @export
print.vbfit <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat("Variational Bayes fit (", x$approx, ", ", x$method, ")\n", sep = "")
  if (!is.null(x$call)) cat("Call: ", paste(deparse(x$call), collapse = "\n"), "\n", sep = "")
  cat("Family:", x$family$family, "(link =", x$family$link, ")\n\n")
  tab <- cbind(mean = x$coefficients, sd = sqrt(diag(x$vcov)))
  print(tab, digits = digits)
  cat(sprintf("\nELBO %.3f  (E[log-lik] %.3f - KL %.3f)\n", x$elbo, x$elbo_terms[["loglik"]],
              x$elbo_terms[["kl"]]))
  cat(sprintf("%s in %d iterations, %.3g s\n", if (isTRUE(x$converged)) "Converged" else "NOT converged",
              x$iterations, x$time))
  rank_note(x$rank, length(x$coefficients))
  separation_note(x$separated)
  invisible(x)
}

separation_note <- function(separated) {
  if (isTRUE(separated))
    cat("Note: the data are (quasi-)separated, so the likelihood has no finite maximum;",
        "the proper prior keeps the posterior proper and determines how far the separating",
        "coefficients go.\n", sep = "\n")
}

rank_note <- function(rank, p) {
  if (!is.null(rank) && rank < p)
    cat(sprintf("Note: the design is rank deficient (rank %d < %d coefficients); the prior alone identifies %d direction(s).\n",
                rank, p, p - rank))
}

#' Summarise a variational fit
#'
#' `summary()` computes the posterior table (mean, sd, credible interval), the
#' ELBO and its terms; `print()` formats it.
#' @param object A `vbfit`.
#' @param level Credible level of the intervals.
#' @param ... Unused.
#' @return An object of class `summary.vbfit`.
#' @examples
#' summary(vb(mpg ~ wt + hp, data = mtcars))
#' @export
summary.vbfit <- function(object, level = 0.95, ...) {
  ci <- confint(object, level = level)
  tab <- cbind(Mean = object$coefficients, SD = sqrt(diag(object$vcov)), ci)
  sig <- NULL
  if (!is.null(object$tau)) {
    A <- object$tau[["shape"]]; B <- object$tau[["rate"]]
    # sigma = tau^{-1/2} with tau ~ Gamma(A, B)
    q <- 1 / sqrt(stats::qgamma(c(1 - (1 - level) / 2, (1 - level) / 2), A, B))
    sig <- c(mean = exp(lgamma(A - 0.5) - lgamma(A)) * sqrt(B), q)
  } else if (identical(object$family$family, "gaussian") && !is.null(object$sgvb)) {
    # SGVB: log tau ~ N(m, s2) in the joint q, sigma = exp(-log tau / 2)
    d <- length(object$sgvb$mu); m <- object$sgvb$mu[[d]]; s2 <- object$sgvb$Sigma[d, d]
    z <- stats::qnorm(c(1 - (1 - level) / 2, (1 - level) / 2))
    sig <- c(mean = exp(-m / 2 + s2 / 8), exp(-(m + z * sqrt(s2)) / 2))
  }
  structure(list(call = object$call, family = object$family, approx = object$approx,
                 method = object$method, coefficients = tab, sigma = sig,
                 elbo_terms = object$elbo_terms, converged = object$converged,
                 iterations = object$iterations, nobs = nobs(object), rank = object$rank,
                 ncoef = length(object$coefficients), level = level, mc_se = object$mc_se,
                 separated = object$separated),
            class = "summary.vbfit")
}

#' @export
print.summary.vbfit <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat("Variational Bayes fit (", x$approx, " Gaussian q, ", x$method, ")\n", sep = "")
  if (!is.null(x$call)) cat("Call: ", paste(deparse(x$call), collapse = "\n"), "\n", sep = "")
  cat("Family:", x$family$family, "(link =", x$family$link, ")  Observations:", x$nobs, "\n\n")
  cat("Posterior (approximate):\n")
  printCoefmat(x$coefficients, digits = digits, has.Pvalue = FALSE, P.values = FALSE,
               cs.ind = 1:2, tst.ind = integer(0))
  if (!is.null(x$sigma))
    cat(sprintf("\nNoise sd sigma: mean %.4g, %g%% interval [%.4g, %.4g]\n", x$sigma[1],
                100 * x$level, x$sigma[2], x$sigma[3]))
  e <- x$elbo_terms
  cat(sprintf("\nELBO = E_q[log p(y|theta)] - KL(q || prior)\n     = %.4f - %.4f = %.4f",
              e[["loglik"]], e[["kl"]], e[["elbo"]]))
  if (!is.null(x$mc_se)) cat(sprintf("  (Monte Carlo se %.3g)", x$mc_se))
  cat("\n(a lower bound on the log evidence log p(y))\n")
  cat(sprintf("%s in %d iterations.\n", if (isTRUE(x$converged)) "Converged" else "NOT converged", x$iterations))
  rank_note(x$rank, x$ncoef)
  separation_note(x$separated)
  invisible(x)
}
