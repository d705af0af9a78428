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
#' The residual types of [stats::residuals.glm()], evaluated at the fitted
#' values mu-hat = E_q(mu), the posterior mean of the mean response (binomial:
#' proportions), with prior weights w (binomial: trials) and the family's
#' variance function V:
#'
#' * `"deviance"` (the default, as for `glm`): sign(y - mu-hat) sqrt(d_i), d_i
#'   the family's deviance contribution at mu-hat;
#' * `"pearson"`: (y - mu-hat) sqrt(w) / sqrt(V(mu-hat));
#' * `"working"`: (y - mu-hat) / mu.eta(eta-hat), eta-hat = g(mu-hat);
#' * `"response"`: y - mu-hat.
#'
#' With wide priors q concentrates at the maximum-likelihood estimate and each
#' type approaches glm's.  With `na.action = na.exclude` the dropped rows come
#' back as `NA`, as in [glm()].
#' @param object A fit from [vb()] or [vb_fit()].
#' @param type `"deviance"`, `"pearson"`, `"working"` or `"response"`.
#' @param ... Unused.
#' @return A numeric vector, one value per observation.
#' @examples
#' fit <- vb(mpg ~ wt, data = mtcars)
#' head(residuals(fit))
#' fp <- vb(count ~ spray, data = InsectSprays, family = poisson())
#' head(residuals(fp, type = "pearson"))
#' @export
residuals.vbfit <- function(object, type = c("deviance", "pearson", "working", "response"), ...) {
  type <- match.arg(type)
  fam <- object[["family"]]
  mu <- object[["fitted.values"]]
  r <- object[["residuals"]]
  y <- r + mu
  w <- object[["prior.weights"]]
  res <- switch(type,
    response = r,
    pearson = r * sqrt(w) / sqrt(fam$variance(mu)),
    working = r / fam$mu.eta(fam$linkfun(mu)),
    deviance = sign(r) * sqrt(pmax(fam$dev.resids(y, mu, w), 0)))
  stats::naresid(object[["na.action"]], res)
}

#' Generics of glm for variational fits
#'
#' The accessors a `glm` user expects, with their meaning under the
#' approximate posterior q:
#'
#' * `sigma()`: the posterior mean of the noise sd sigma for `gaussian()`;
#'   1 for poisson and binomial (their dispersion is fixed).
#' * `family()`, `model.frame()`, `model.matrix()` (the design as built,
#'   also for fits made with `x = FALSE` when they have a formula),
#'   `weights()` (`"prior"` weights, binomial: trials; or `"working"` weights
#'   w mu.eta(eta)^2 / V(mu) at the fitted values).
#' * `deviance()`: the *expected* deviance under q,
#'   E_q sum_i d_i(y_i, mu_i(beta)), with d_i the family's deviance
#'   contribution (gaussian: w (y - eta)^2, so E_q gives the residual sum of
#'   squares plus x' Sigma x).  It is at least the deviance at the fitted
#'   values and tends to glm's deviance as q concentrates.
#' * `df.residual()`, `logLik()`, `AIC()` and `BIC()` stop with an error: the
#'   priors shrink the coefficients, so n - p residual degrees of freedom and a
#'   maximised likelihood do not describe the fit.  Compare models by
#'   [elbo()] (a lower bound on the log evidence), [compare_models()] or
#'   `loo()` instead.
#'
#' @param object A fit from [vb()] or [vb_fit()].
#' @param formula A fit (the argument name of [stats::model.frame()]).
#' @param type For `weights()`: `"prior"` or `"working"`.
#' @param ... Unused.
#' @return `sigma()` and `deviance()`: a number; the others as their stats
#'   counterparts.
#' @name vbfit_generics
#' @examples
#' fit <- vb(mpg ~ wt + factor(cyl), data = mtcars)
#' sigma(fit)
#' deviance(fit)
#' head(model.matrix(fit))
#' family(fit)
#' try(AIC(fit))
NULL

#' @rdname vbfit_generics
#' @importFrom stats sigma
#' @export
sigma.vbfit <- function(object, ...) {
  s <- sigma_posterior(object)
  if (is.null(s)) 1 else s[["mean"]]
}

# Posterior mean and equal-tailed interval of sigma for gaussian fits (NULL
# otherwise): CAVI q(tau) = Gamma(A, B), sigma = tau^-1/2; SGVB: log tau
# Gaussian in the joint q.
sigma_posterior <- function(object, level = 0.95) {
  if (!identical(object[["family"]]$family, "gaussian")) return(NULL)
  tau <- object[["tau"]]
  sg <- object[["sgvb"]]
  if (!is.null(tau)) {
    A <- tau[["shape"]]; B <- tau[["rate"]]
    q <- 1 / sqrt(stats::qgamma(c(1 - (1 - level) / 2, (1 - level) / 2), A, B))
    return(c(mean = exp(lgamma(A - 0.5) - lgamma(A)) * sqrt(B), lower = q[1], upper = q[2]))
  }
  if (!is.null(sg)) {
    d <- length(sg$mu); m <- sg$mu[[d]]; s2 <- sg$Sigma[d, d]
    z <- stats::qnorm(c(1 - (1 - level) / 2, (1 - level) / 2))
    q <- exp(-(m + z * sqrt(s2)) / 2)
    return(c(mean = exp(-m / 2 + s2 / 8), lower = q[1], upper = q[2]))
  }
  NULL
}

#' @rdname vbfit_generics
#' @importFrom stats family
#' @export
family.vbfit <- function(object, ...) object[["family"]]

#' @rdname vbfit_generics
#' @export
model.frame.vbfit <- function(formula, ...) {
  mf <- formula[["model"]]
  if (is.null(mf))
    stop("model.frame(): this fit has no model frame: it was made by vb_fit() from a matrix; use vb() with a formula.", call. = FALSE)
  mf
}

#' @rdname vbfit_generics
#' @export
model.matrix.vbfit <- function(object, ...) {
  X <- object[["x"]]
  if (!is.null(X)) return(X)
  if (is.null(object[["terms"]]) || is.null(object[["model"]]))
    stop("model.matrix(): this fit was made with x = FALSE and has no formula to rebuild the design from; refit with x = TRUE.", call. = FALSE)
  stats::model.matrix(object[["terms"]], object[["model"]], contrasts.arg = object[["contrasts"]])
}

#' @rdname vbfit_generics
#' @importFrom stats weights
#' @export
weights.vbfit <- function(object, type = c("prior", "working"), ...) {
  type <- match.arg(type)
  w <- object[["prior.weights"]]
  if (type == "working") {
    fam <- object[["family"]]
    mu <- object[["fitted.values"]]
    w <- w * fam$mu.eta(fam$linkfun(mu))^2 / fam$variance(mu)
  }
  stats::naresid(object[["na.action"]], w)
}

#' @rdname vbfit_generics
#' @importFrom stats deviance
#' @export
deviance.vbfit <- function(object, ...) {
  fam <- object[["family"]]$family
  # gaussian: E_q sum w (y - eta)^2 = sum w (y - m)^2 + tr(X'WX Sigma), which
  # the engine returns (fits carry no linear-predictor variances)
  if (fam == "gaussian" && is.numeric(object[["ewrss"]])) return(object[["ewrss"]])
  m <- object[["linear.predictors"]]
  v <- object[["linear.predictors.var"]]
  w <- object[["prior.weights"]]
  mu <- object[["fitted.values"]]
  y <- object[["residuals"]] + mu
  if (fam == "gaussian" && is.null(v)) {
    if (is.null(object[["x"]]) || is.null(object[["vcov"]]))
      stop("deviance(): this gaussian fit keeps neither its expected residual sum of squares nor its design (x = FALSE); refit with x = TRUE.", call. = FALSE)
    return(expected_wrss(object[["x"]], y, w, m, object[["vcov"]]))
  }
  keep <- w > 0
  m <- m[keep]; v <- v[keep]; w <- w[keep]; y <- y[keep]
  switch(fam,
    gaussian = sum(w * ((y - m)^2 + v)),
    # 2 w (y log(y / mu) - (y - mu)), E_q mu = exp(m + v / 2), E_q log mu = m
    poisson = 2 * sum(w * (ifelse(y > 0, y * log(y), 0) - y * m - y + exp(m + v / 2))),
    binomial = {
      # 2 w [y log(y / mu) + (1 - y) log((1 - y) / (1 - mu))] with y a
      # proportion: E_q log mu = E log plogis(eta) by Gauss-Hermite
      gh <- gauss_hermite(max(32L, object[["control"]][["gh_nodes"]]))
      eta <- outer(sqrt(2 * v), gh$x) + m
      El1p <- drop(log1p(exp(-abs(eta))) %*% gh$w) + drop(pmax(eta, 0) %*% gh$w) # E log(1 + e^eta)
      xlx <- function(a) ifelse(a > 0, a * log(a), 0)
      2 * sum(w * (xlx(y) + xlx(1 - y) - y * m + El1p))
    })
}

#' @rdname vbfit_generics
#' @importFrom stats df.residual
#' @export
df.residual.vbfit <- function(object, ...) {
  stop("df.residual(): a variational Bayes fit has no residual degrees of freedom: the priors shrink the coefficients, so n - p does not describe it. Use the posterior of sigma (sigma(), summary()) and compare models by elbo(), compare_models() or loo().",
       call. = FALSE)
}

#' @rdname vbfit_generics
#' @importFrom stats logLik
#' @export
logLik.vb_posterior <- function(object, ...) {
  stop("logLik(): a variational Bayes fit has no maximised log-likelihood, so logLik(), AIC() and BIC() are not defined for it. Compare models by elbo() (a lower bound on the log evidence log p(y)), compare_models(), or loo() (PSIS leave-one-out).",
       call. = FALSE)
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
  print(format_fixed(tab, digits), quote = FALSE, right = TRUE)
  cat("\n", elbo_line(x), "\n", sep = "")
  cat(convergence_line(x), sprintf(", %.3g s\n", x[["time"]]), sep = "")
  pl <- prior_lines(x, brief = TRUE)
  if (length(pl)) cat("Priors: ", paste(pl, collapse = ";\n        "), "\n", sep = "")
  rank_note(x[["rank"]], length(x[["coefficients"]]))
  separation_note(x[["separated"]])
  invisible(x)
}

#' Summarise a variational fit
#'
#' `summary()` computes the posterior table (mean, sd, credible interval), the
#' posterior of sigma (gaussian), the priors used (see [prior_summary()]),
#' the ELBO and its terms; `print()` formats it, each column in fixed
#' notation with as many decimals as its smallest entry needs.
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
  sig <- sigma_posterior(object, level)
  structure(list(call = object[["call"]], family = object[["family"]], approx = object[["approx"]],
                 method = object[["method"]], coefficients = tab, sigma = sig,
                 elbo_terms = object[["elbo_terms"]], converged = object[["converged"]],
                 iterations = object[["iterations"]], status = object[["status"]],
                 nobs = nobs(object), rank = object[["rank"]],
                 ncoef = length(object[["coefficients"]]), level = level, mc_se = object[["mc_se"]],
                 separated = object[["separated"]], priors = prior_lines(object)),
            class = "summary.vbfit")
}

#' @export
print.summary.vbfit <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat("Variational Bayes fit (", x[["approx"]], " Gaussian q, ", x[["method"]], ")\n", sep = "")
  if (!is.null(x[["call"]])) cat("Call: ", paste(deparse(x[["call"]]), collapse = "\n"), "\n", sep = "")
  cat(sprintf("Family: %s (link = %s)  Observations: %s\n\n", x[["family"]]$family,
              x[["family"]]$link, format(x[["nobs"]])))
  cat("Posterior (approximate):\n")
  print(format_fixed(x[["coefficients"]], digits), quote = FALSE, right = TRUE)
  sig <- x[["sigma"]]
  if (!is.null(sig)) {
    f <- format_fixed(matrix(sig, 1), digits)
    cat(sprintf("\nNoise sd sigma: mean %s, %g%% interval [%s, %s]\n", trimws(f[1]),
                100 * x[["level"]], trimws(f[2]), trimws(f[3])))
  }
  if (length(x[["priors"]])) cat("\nPriors:\n", paste0("  ", x[["priors"]], "\n"), sep = "")
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

# A numeric matrix as strings in fixed notation, column by column: each
# column gets the decimals that show `digits` significant digits of its
# smallest non-zero magnitude (at most 10), so no column mixes notations.
format_fixed <- function(M, digits = 4L) {
  M <- as.matrix(M)
  out <- M
  storage.mode(out) <- "character"
  for (j in seq_len(ncol(M))) {
    v <- M[, j]
    a <- abs(v[is.finite(v) & v != 0])
    d <- if (length(a)) digits - 1L - floor(log10(min(a))) else 0L
    d <- as.integer(min(max(d, 0L), 10L))
    out[, j] <- ifelse(is.finite(v), formatC(v, format = "f", digits = d), format(v))
  }
  out
}

# The priors of a fit as short lines: "(Intercept) ~ normal(20.09, 15.07)
# [centred, autoscaled]".  brief: one line per group, long vectors elided.
prior_lines <- function(x, brief = FALSE, digits = 4L) {
  pr <- x[["prior"]]
  pa <- pr$coef
  cn <- names(x[["coefficients"]])
  if (is.null(pa) || length(pa$type) != length(cn)) return(character(0))
  dist <- c("normal", "laplace")[pa$type + 1L]
  num <- function(v) trimws(formatC(signif(v, digits), digits = digits, format = "g", flag = "-"))
  auto <- function(sp) if (isTRUE(sp$autoscale)) "autoscaled" else NULL
  is_int <- cn == "(Intercept)"
  sp <- pr$specified
  tags_int <- paste(c(if (!is.null(pr$centre)) "on the centred predictors",
                      if (!isTRUE(pr$sd_y == 1)) auto(sp$prior_intercept)), collapse = ", ")
  tags_coef <- paste(c(auto(sp$prior)), collapse = ", ")
  brack <- function(t) if (nzchar(t)) paste0(" (", t, ")") else ""
  prec <- if (identical(x[["family"]]$family, "gaussian") && !is.null(pr$precision))
    sprintf("1/sigma^2 ~ gamma(%s, %s)%s", num(pr$precision$shape), num(pr$precision$rate),
            brack(paste(c(auto(sp$prior_precision)), collapse = ", ")))
  if (brief) {
    vec <- function(v) {
      v <- num(v)
      if (length(unique(v)) == 1L) return(v[1L])
      if (length(v) > 4L) v <- c(v[1:3], "...")
      paste0("[", paste(v, collapse = ", "), "]")
    }
    lines <- character(0)
    if (any(is_int))
      lines <- c(lines, sprintf("intercept ~ %s(%s, %s)%s", dist[is_int], num(pa$location[is_int]),
                                num(pa$scale[is_int]), brack(tags_int)))
    if (any(!is_int)) {
      d <- unique(dist[!is_int])
      lines <- c(lines, sprintf("coefficients ~ %s(%s, %s)%s", paste(d, collapse = "/"),
                                vec(pa$location[!is_int]), vec(pa$scale[!is_int]), brack(tags_coef)))
    }
    return(c(lines, prec))
  }
  w <- max(nchar(cn), 9L)
  lines <- sprintf("%-*s ~ %s(%s, %s)%s", w, cn, dist, num(pa$location), num(pa$scale),
                   ifelse(is_int, brack(tags_int), brack(tags_coef)))
  if (!is.null(prec)) lines <- c(lines, sprintf("%-*s ~ %s", w, "1/sigma^2", sub("^1/sigma\\^2 ~ ", "", prec)))
  lines
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
