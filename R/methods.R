# The object model.  Every approximate posterior carries the class
# "vb_posterior" and the fields `elbo`, `elbo_trace`, `converged`,
# `iterations` and `status`; what every posterior has lives here, on the
# parent: elbo(), coef(), vcov(), confint(), draws(), print(), plot() of the
# ELBO trace, tidy(), glance() and vb_diagnose() (through the two internal
# generics q_sample() and log_joint()).  The subclasses are
#   c("vbfit", "vb_posterior")      GLMs from vb() / vb_fit(): they have data, so
#                                   nobs, fitted, residuals, predict, simulate
#   c("vbdensity", "vb_posterior")  vb_density(): a log density, no data
#   c("vblds", "vb_posterior")      vb_lds(): latent dynamical systems
# Data-bound generics called on a posterior without a method for them stop
# with a sentence instead of returning NULL or 0.

#' Evidence lower bound of a fit
#'
#' `elbo()` returns the final ELBO, a lower bound on the log evidence log p(y).
#' With `terms = TRUE` it returns the decomposition
#' ELBO = E_q log p(y | theta) - KL(q || prior) when the fit has it (fits of
#' a log density by [vb_density()] have only the total).
#'
#' @param object A fitted model (any `vb_posterior`, or a list with an
#'   `elbo` element).
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
elbo.vb_posterior <- function(object, terms = FALSE, ...) {
  e <- object[["elbo"]]
  if (is.null(e)) stop("elbo(): this fit carries no ELBO.", call. = FALSE)
  et <- object[["elbo_terms"]]
  if (isTRUE(terms) && !is.null(et)) et else e
}

#' @rdname elbo
#' @export
elbo.default <- function(object, terms = FALSE, ...) {
  if (!is.list(object) || is.null(object[["elbo"]]))
    stop("elbo(): this object carries no ELBO.", call. = FALSE)
  et <- object[["elbo_terms"]]
  if (isTRUE(terms) && !is.null(et)) et else object[["elbo"]]
}

#' @export
coef.vb_posterior <- function(object, ...) object[["coefficients"]]

#' @export
vcov.vb_posterior <- function(object, ...) {
  V <- object[["vcov"]]
  if (is.null(V))
    stop(sprintf("vcov(): this %s fit has no Gaussian q over coefficients.", class(object)[1L]),
         call. = FALSE)
  V
}

#' Credible intervals from the approximate posterior
#'
#' Equal-tailed intervals of the Gaussian q for each coefficient.
#' @param object A fit from [vb()], [vb_fit()] or [vb_density()].
#' @param parm Coefficients (names or indices); all by default.
#' @param level Credible level.
#' @param ... Unused.
#' @return A matrix with one row per coefficient.
#' @examples
#' confint(vb(mpg ~ wt + hp, data = mtcars))
#' @export
confint.vb_posterior <- function(object, parm, level = 0.95, ...) {
  check_level(level)
  cf <- coef(object)
  if (is.null(cf))
    stop(sprintf("confint(): this %s fit has no coefficients.", class(object)[1L]), call. = FALSE)
  sd <- sqrt(diag(vcov(object)))
  if (missing(parm)) parm <- names(cf)
  bad <- if (is.character(parm)) setdiff(parm, names(cf)) else
    if (is.numeric(parm)) parm[!parm %in% seq_along(cf)] else parm
  if (length(bad) || !(is.character(parm) || is.numeric(parm)))
    stop(sprintf("confint(): 'parm' must name coefficients (%s) or index them (1 to %d); not %s.",
                 paste(names(cf), collapse = ", "), length(cf), paste(format(bad), collapse = ", ")),
         call. = FALSE)
  a <- (1 - level) / 2
  z <- qnorm(c(a, 1 - a))
  ci <- cbind(cf + z[1] * sd, cf + z[2] * sd)
  dimnames(ci) <- list(names(cf), paste(format(100 * c(a, 1 - a), trim = TRUE), "%"))
  ci[parm, , drop = FALSE]
}

#' Draws from the approximate posterior
#'
#' @param object A fitted model.
#' @param n Number of draws.
#' @param ... Unused.
#' @return An `n` x d matrix of draws from q, one column per parameter; fits
#'   of gaussian GLMs add a column `sigma` (the noise standard deviation).
#' @examples
#' fit <- vb(mpg ~ wt, data = mtcars)
#' head(draws(fit, 5))
#' @export
draws <- function(object, n = 1000, ...) UseMethod("draws")

#' @rdname draws
#' @export
draws.vb_posterior <- function(object, n = 1000, ...) {
  n <- check_count(n, "n")
  th <- q_sample(object, n)[["theta"]]
  out <- t(th)
  nm <- rownames(th)
  if (is.null(nm) && length(coef(object)) == ncol(out)) nm <- names(coef(object))
  colnames(out) <- nm
  out
}

#' @rdname draws
#' @export
draws.vbfit <- function(object, n = 1000, ...) {
  n <- check_count(n, "n")
  out <- t(q_sample(object, n)[["theta"]])
  if (identical(object[["family"]]$family, "gaussian")) {
    out[, ncol(out)] <- exp(-out[, ncol(out)] / 2)
    colnames(out) <- c(names(object[["coefficients"]]), "sigma")
  } else colnames(out) <- names(object[["coefficients"]])
  out
}

# ---- the two internal generics behind vb_diagnose() ------------------------
# q_sample(fit, S): S draws of the parameter vector theta from q, one per
# column (a d x S matrix), with log q at each draw: list(theta, logq).
# log_joint(fit, theta): log p(y, theta) at each column of theta (length S).
# A posterior class gets vb_diagnose() (and compare_models(iwae = TRUE)) by
# providing both; theta is whatever space q lives in, as long as the two
# agree (log q and log p are densities in the same coordinates).  The methods
# are registered (S3method() in NAMESPACE) so that they dispatch from any caller.
q_sample <- function(fit, S) UseMethod("q_sample")

log_joint <- function(fit, theta) UseMethod("log_joint")

#' @export
q_sample.default <- function(fit, S) {
  stop(sprintf("fits of class '%s' have no q_sample() method, so q cannot be sampled.",
               class(fit)[1L]), call. = FALSE)
}

# The parent's q: a Gaussian over the coefficients, N(coef, vcov), as fitted
# by vb_density() and by any engine whose q is one Gaussian.
#' @export
q_sample.vb_posterior <- function(fit, S) {
  mu <- fit[["coefficients"]]
  V <- fit[["vcov"]]
  if (is.null(mu) || is.null(V)) NextMethod()
  else gaussian_q_sample(mu, V, S)
}

#' @export
log_joint.default <- function(fit, theta) {
  stop(sprintf("fits of class '%s' have no log_joint() method, so log p(y, theta) cannot be evaluated.",
               class(fit)[1L]), call. = FALSE)
}

# GLMs: theta = coefficients, then log tau for gaussian.  CAVI fits have
# q(beta) q(tau) (tau ~ Gamma, so log tau has density Gamma(e^l) e^l); SGVB
# fits keep their joint Gaussian q over (beta, log tau) in $sgvb.
#' @export
q_sample.vbfit <- function(fit, S) {
  q <- fit[["sgvb"]]
  if (is.null(q)) q <- list(mu = fit[["coefficients"]], Sigma = fit[["vcov"]])
  out <- gaussian_q_sample(q[["mu"]], q[["Sigma"]], S)
  tau <- if (is.null(fit[["sgvb"]])) fit[["tau"]] else NULL
  if (!is.null(tau)) {
    A <- tau[["shape"]]; B <- tau[["rate"]]
    t <- stats::rgamma(S, A, B)
    out$theta <- rbind(out$theta, log_tau = log(t))
    out$logq <- out$logq + stats::dgamma(t, A, B, log = TRUE) + log(t)
  }
  out
}

#' @export
log_joint.vbfit <- function(fit, theta) {
  if (is.null(fit[["x"]]))
    stop("this fit was made with x = FALSE, so its design matrix is gone; refit with x = TRUE.",
         call. = FALSE)
  if (is.null(fit[["y"]]))
    stop("this fit was made with y = FALSE, so its response is gone; refit with y = TRUE.",
         call. = FALSE)
  m <- fit_model(fit)
  .Call(C_glm_log_joint, m, centre_theta(theta, m$centre))$value
}

# ---- data-bound generics: only where there are data ------------------------

#' @export
nobs.vbfit <- function(object, ...) sum(object[["prior.weights"]] != 0)

#' @export
fitted.vbfit <- function(object, ...) stats::napredict(object[["na.action"]], object[["fitted.values"]])

#' Residuals of a variational GLM fit
#'
#' Response residuals y - E_q(mu), where E_q(mu) is the posterior mean of the
#' mean response (the fitted values; binomial: proportions).  With
#' `na.action = na.exclude` the dropped rows come back as `NA`, as in [glm()].
#' @param object A fit from [vb()] or [vb_fit()].
#' @param type `"response"` (the only type so far).
#' @param ... Unused.
#' @return A numeric vector, one value per observation.
#' @examples
#' head(residuals(vb(mpg ~ wt, data = mtcars)))
#' @export
residuals.vbfit <- function(object, type = "response", ...) {
  type <- match.arg(type)
  stats::naresid(object[["na.action"]], object[["residuals"]])
}

#' @export
nobs.vb_posterior <- function(object, ...) no_data(object, "nobs")

#' @export
fitted.vb_posterior <- function(object, ...) no_data(object, "fitted")

#' @export
residuals.vb_posterior <- function(object, ...) no_data(object, "residuals")

#' @export
predict.vb_posterior <- function(object, ...) no_data(object, "predict")

#' @export
simulate.vb_posterior <- function(object, nsim = 1, seed = NULL, ...) no_data(object, "simulate")

no_data <- function(object, what) {
  why <- if (inherits(object, "vbdensity"))
    "a vb_density() fit approximates the posterior of a log density and has no data"
  else sprintf("it is not implemented for '%s' fits", class(object)[1L])
  stop(sprintf("%s(): not available: %s. nobs(), fitted(), residuals(), predict() and simulate() need a fit with data, such as one from vb().",
               what, why), call. = FALSE)
}

# ---- printing -----------------------------------------------------------------

#' @export
print.vb_posterior <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat(sprintf("Variational Bayes posterior (%s", class(x)[1L]),
      if (!is.null(x[["approx"]])) paste0(", ", x[["approx"]], " q"), ")\n", sep = "")
  if (!is.null(x[["call"]])) cat("Call: ", paste(deparse(x[["call"]]), collapse = "\n"), "\n", sep = "")
  cf <- x[["coefficients"]]
  if (length(cf)) {
    cat("\n")
    print(cbind(mean = cf, sd = sqrt(diag(x[["vcov"]]))), digits = digits)
  }
  cat("\n", elbo_line(x), "\n", convergence_line(x), "\n", sep = "")
  invisible(x)
}

#' @export
print.vbfit <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat("Variational Bayes fit (", x[["approx"]], ", ", x[["method"]], ")\n", sep = "")
  if (!is.null(x[["call"]])) cat("Call: ", paste(deparse(x[["call"]]), collapse = "\n"), "\n", sep = "")
  cat(sprintf("Family: %s (link = %s)\n\n", x[["family"]]$family, x[["family"]]$link))
  tab <- cbind(mean = x[["coefficients"]], sd = sqrt(diag(x[["vcov"]])))
  print(tab, digits = digits)
  cat("\n", elbo_line(x), "\n", sep = "")
  cat(convergence_line(x), sprintf(", %.3g s\n", x[["time"]]), sep = "")
  rank_note(x[["rank"]], length(x[["coefficients"]]))
  separation_note(x[["separated"]])
  invisible(x)
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
  tab <- cbind(Mean = object[["coefficients"]], SD = sqrt(diag(object[["vcov"]])), ci)
  sig <- NULL
  tau <- object[["tau"]]
  sg <- object[["sgvb"]]
  if (!is.null(tau)) {
    A <- tau[["shape"]]; B <- tau[["rate"]]
    # sigma = tau^{-1/2} with tau ~ Gamma(A, B)
    q <- 1 / sqrt(stats::qgamma(c(1 - (1 - level) / 2, (1 - level) / 2), A, B))
    sig <- c(mean = exp(lgamma(A - 0.5) - lgamma(A)) * sqrt(B), q)
  } else if (identical(object[["family"]]$family, "gaussian") && !is.null(sg)) {
    # SGVB: log tau ~ N(m, s2) in the joint q, sigma = exp(-log tau / 2)
    d <- length(sg$mu); m <- sg$mu[[d]]; s2 <- sg$Sigma[d, d]
    z <- stats::qnorm(c(1 - (1 - level) / 2, (1 - level) / 2))
    sig <- c(mean = exp(-m / 2 + s2 / 8), exp(-(m + z * sqrt(s2)) / 2))
  }
  structure(list(call = object[["call"]], family = object[["family"]], approx = object[["approx"]],
                 method = object[["method"]], coefficients = tab, sigma = sig,
                 elbo_terms = object[["elbo_terms"]], converged = object[["converged"]],
                 iterations = object[["iterations"]], status = object[["status"]],
                 nobs = nobs(object), rank = object[["rank"]],
                 ncoef = length(object[["coefficients"]]), level = level, mc_se = object[["mc_se"]],
                 separated = object[["separated"]]),
            class = "summary.vbfit")
}

#' @export
print.summary.vbfit <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat("Variational Bayes fit (", x[["approx"]], " Gaussian q, ", x[["method"]], ")\n", sep = "")
  if (!is.null(x[["call"]])) cat("Call: ", paste(deparse(x[["call"]]), collapse = "\n"), "\n", sep = "")
  cat(sprintf("Family: %s (link = %s)  Observations: %s\n\n", x[["family"]]$family,
              x[["family"]]$link, format(x[["nobs"]])))
  cat("Posterior (approximate):\n")
  printCoefmat(x[["coefficients"]], digits = digits, has.Pvalue = FALSE, P.values = FALSE,
               cs.ind = 1:2, tst.ind = integer(0))
  sig <- x[["sigma"]]
  if (!is.null(sig))
    cat(sprintf("\nNoise sd sigma: mean %.4g, %g%% interval [%.4g, %.4g]\n", sig[1],
                100 * x[["level"]], sig[2], sig[3]))
  e <- x[["elbo_terms"]]
  cat(sprintf("\nELBO = E_q[log p(y|theta)] - KL(q || prior)\n     = %.4f - %.4f = %.4f",
              e[["loglik"]], e[["kl"]], e[["elbo"]]))
  if (!is.null(x[["mc_se"]])) cat(sprintf("  (Monte Carlo se %.3g)", x[["mc_se"]]))
  cat("\n(a lower bound on the log evidence log p(y))\n")
  cat(convergence_line(x), ".\n", sep = "")
  rank_note(x[["rank"]], x[["ncoef"]])
  separation_note(x[["separated"]])
  invisible(x)
}

# "ELBO e  (E[log-lik] l - KL k)" when the terms are there, with a Monte
# Carlo se for stochastic estimates.
elbo_line <- function(x) {
  e <- x[["elbo_terms"]]
  s <- if (!is.null(e) && all(c("loglik", "kl") %in% names(e)) && all(is.finite(e[c("loglik", "kl")])))
    sprintf("ELBO %.3f  (E[log-lik] %.3f - KL %.3f)", x[["elbo"]], e[["loglik"]], e[["kl"]])
  else sprintf("ELBO %.3f", x[["elbo"]])
  se <- x[["mc_se"]]
  if (!is.null(se) && is.finite(se) && se > 0) s <- paste0(s, sprintf("  (Monte Carlo se %.2g)", se))
  s
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
