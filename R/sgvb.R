#' Variational Bayes for any log density by stochastic gradients
#'
#' Fits a Gaussian q(theta) = N(mu, L L') to the unnormalised density
#' exp(log_density(theta)) by maximising the evidence lower bound
#' `ELBO = E_q[log_density(theta)] + H(q)` with stochastic gradients (SGVB):
#' the pathwise (`"reparam"`) or the score-function (`"score"`) estimator,
#' Adam steps whose size is found by short trial runs, and a stop when the
#' smoothed ELBO no longer changes (see [vb_control()] for the knobs).
#'
#' The score-function estimator multiplies f(theta) - c by the score of q,
#' where the baseline c is, for each draw, the mean of f over the other draws
#' of the same step (leave-one-out; with one draw per step, a moving average of
#' earlier steps); either way c does not depend on the draw it multiplies, so
#' the estimator stays unbiased while its variance drops.
#'
#' The ELBO is a lower bound on log of the integral of exp(log_density), so
#' it is the log evidence when `log_density` is log p(y, theta).  Parameters
#' must be unconstrained: transform bounded ones (e.g. a log scale) and add
#' the log Jacobian to `log_density`.
#'
#' @param log_density Function of the parameter vector `theta` (and `...`)
#'   returning log p(y, theta) up to a constant, a single number.
#' @param init Starting values (named numeric vector; the names label the
#'   coefficients).
#' @param gradient Optional function of `theta` (and `...`) returning the
#'   gradient of `log_density`; `NULL` uses central differences (2 d extra
#'   evaluations per draw).
#' @param approx `"fullrank"` (dense covariance) or `"meanfield"` (diagonal).
#' @param estimator `"reparam"` or `"score"`.
#' @param control A [vb_control()] list (`samples`, `step_size`, `sgvb_maxit`,
#'   ... apply; its `estimator` is overridden by the argument).
#' @param ... Further arguments passed to `log_density` and `gradient`.
#' @return An object of class `c("vbdensity", "vb_posterior")` with `coefficients`
#'   (mean of q), `vcov`, `elbo` (Monte Carlo estimate at the final q) and its
#'   standard error `mc_se`, `elbo_trace` (per-step estimates), `converged`,
#'   `iterations`, `status` (the engine's status code: 0 converged, 1 step
#'   limit reached, 4 the ELBO was not finite), `time` and `sgvb` (run
#'   details: step size, gradient and function evaluations, skipped non-finite
#'   draws, the smoothed trace).  `print`, `summary`, `coef`, `vcov`,
#'   `confint`, `elbo`, `plot`, `draws` and [vb_diagnose()] work on it.
#'
#'   A draw at which `log_density` is not finite is skipped during the
#'   optimisation; but when q still puts mass there at the end (a draw of the
#'   final averaging phase or of the final ELBO estimate is not finite), the
#'   ELBO of q is not finite, the fit is reported as not converged (`status`
#'   4, with a warning) and `elbo` is the value that draw gave (`-Inf`).  An
#'   error in `log_density` or `gradient`, or a gradient that is `NA` or not
#'   finite where the log density is finite, stops the fit with an error that
#'   names the function and the parameter values; the random number stream is
#'   then left exactly where the draws made so far took it.
#' @seealso [vb()] with `method = "sgvb"` for GLMs.
#' @examples
#' set.seed(1)
#' S <- matrix(c(1, 0.5, 0.5, 2), 2)
#' P <- solve(S)
#' fit <- vb_density(function(th) -0.5 * sum(th * (P %*% th)), init = c(a = 1, b = -1),
#'                   gradient = function(th) -drop(P %*% th),
#'                   control = vb_control(quiet = TRUE, sgvb_maxit = 2000))
#' coef(fit)
#' vcov(fit)
#' @export
vb_density <- function(log_density, init, gradient = NULL, approx = c("fullrank", "meanfield"),
                       estimator = c("reparam", "score"), control = vb_control(), ...) {
  t0 <- proc.time()[["elapsed"]]
  cl <- match.call()
  if (!is.function(log_density))
    stop("vb_density(): 'log_density' must be a function of the parameter vector.", call. = FALSE)
  if (!is.null(gradient) && !is.function(gradient))
    stop("vb_density(): 'gradient' must be a function of the parameter vector, or NULL for numerical differences.", call. = FALSE)
  if (!is.numeric(init) || length(init) < 1L || any(!is.finite(init)))
    stop("vb_density(): 'init' must be a numeric vector of finite starting values.", call. = FALSE)
  approx <- match.arg(approx)
  estimator <- match.arg(estimator)
  control <- as_vb_control(control)
  d <- length(init)
  nm <- if (is.null(names(init))) paste0("theta", seq_len(d)) else names(init)
  init <- as.double(init)
  fn <- function(theta) log_density(theta, ...)
  gr <- if (is.null(gradient)) NULL else function(theta) gradient(theta, ...)
  f0 <- fn(init)
  if (!is.numeric(f0) || length(f0) != 1L || !is.finite(f0))
    stop("vb_density(): 'log_density(init)' must be a single finite number; choose starting values inside the support.", call. = FALSE)
  if (!is.null(gr)) {
    g0 <- gr(init)
    if (!is.numeric(g0) || length(g0) != d || any(!is.finite(g0)))
      stop(sprintf("vb_density(): 'gradient(init)' must be a finite numeric vector of length %d.", d), call. = FALSE)
  }
  # starting scale: the curvature at init when it is negative definite
  H <- num_hessian(fn, gr, init)
  L0 <- init_chol(-H, approx)
  target <- list(type = "r", fn = density_target(fn, gr, d), d = as.integer(d))
  r <- .Call(C_sgvb_fit, target, init, L0, pre_chol(-H), control,
             sgvb_opts(control, approx, estimator))
  # the engine has saved the RNG state; now the user's error may surface
  if (r$status == vb_status_codes[["interrupted"]])
    check_status(r$status, "vb_density()", r$iterations, control$sgvb_tol, "sgvb_maxit")
  if (!is.null(r$error)) stop(r$error)
  Sigma <- tcrossprod(r$L)
  dimnames(Sigma) <- list(nm, nm)
  fit <- list(coefficients = setNames(r$mu, nm), vcov = Sigma, elbo = r$elbo,
              elbo_trace = r$trace, elbo_terms = c(elbo = r$elbo), converged = r$converged,
              iterations = r$iterations, status = r$status, approx = approx, method = "sgvb",
              estimator = estimator, mc_se = r$elbo_se, control = control, call = cl,
              target = fn,
              sgvb = list(mu = setNames(r$mu, nm), Sigma = Sigma, L = r$L, smooth = r$smooth,
                          eta = r$eta, n_grad = r$n_grad, n_eval = r$n_eval,
                          n_nonfinite = r$n_nonfinite, estimator = estimator))
  fit$time <- proc.time()[["elapsed"]] - t0
  class(fit) <- c("vbdensity", "vb_posterior")
  check_status(r$status, "vb_density()", r$iterations, control$sgvb_tol, "sgvb_maxit")
  fit
}

# The estimator options of C_sgvb_fit / C_sgvb_grad (the rest of the settings
# are read by name from the vb_control() list).
sgvb_opts <- function(control, approx, estimator) {
  S <- control$samples
  if (is.null(S)) S <- if (estimator == "score") 8L else 1L
  list(fullrank = approx == "fullrank", score = estimator == "score", samples = as.integer(S))
}

# The R target of the SGVB engine (src/sgvb_targets.c): function(theta, grad)
# returning c(f) or, when grad is TRUE and f is finite, c(f, gradient), as
# doubles.  It never raises an error: a failure of the user's function, or a
# value the engine cannot use, comes back as a condition (the engine stops,
# restores the RNG, and vb_density() re-raises it); an interrupt comes back as
# the interrupt condition.  A non-finite f is passed on (the draw is skipped),
# as is a non-finite numerical gradient (differences across a boundary of the
# support); a non-finite user gradient where f is finite is an error.
density_target <- function(fn, gr, d) {
  fail <- function(msg, theta, parent = NULL)
    errorCondition(sprintf("vb_density(): %s (at theta = c(%s)).", msg,
                           paste(format(theta, digits = 4), collapse = ", ")),
                   parent = parent, class = "vb_density_error", call = NULL)
  function(theta, grad) {
    tryCatch({
      f <- tryCatch(fn(theta), error = function(e) fail(paste("'log_density' failed:", conditionMessage(e)), theta, e))
      if (inherits(f, "error")) return(f)
      if (!is.numeric(f) || length(f) != 1L)
        return(fail("'log_density' must return a single number", theta))
      f <- as.double(f) # NA_integer_ becomes NA_real_: a non-finite draw
      if (!grad || !is.finite(f)) return(f)
      if (is.null(gr)) return(c(f, num_grad(fn, theta)))
      g <- tryCatch(gr(theta), error = function(e) fail(paste("'gradient' failed:", conditionMessage(e)), theta, e))
      if (inherits(g, "error")) return(g)
      if (!(is.numeric(g) || is.logical(g)) || length(g) != d)
        return(fail(sprintf("'gradient' must return a numeric vector of length %d", d), theta))
      if (!is.double(g) && anyNA(g))
        return(fail(sprintf("'gradient' returned NA (as %s) where 'log_density' is %g; it must return finite numbers wherever the log density is finite",
                            typeof(g), f), theta))
      if (!is.numeric(g))
        return(fail(sprintf("'gradient' must return a numeric vector of length %d, not a %s vector", d, typeof(g)), theta))
      g <- as.double(g)
      if (any(!is.finite(g)))
        return(fail(sprintf("'gradient' returned non-finite values (%s) where 'log_density' is %g; it must be finite wherever the log density is finite",
                            paste(format(g[!is.finite(g)]), collapse = ", "), f), theta))
      c(f, g)
    }, error = function(e) fail(paste("evaluating the log density failed:", conditionMessage(e)), theta, e),
       interrupt = function(e) e)
  }
}

# Lower-triangular L with L L' = H^{-1} (fullrank) or diag(1 / sqrt(diag H))
# (meanfield); unit scales where H is not positive definite.
init_chol <- function(H, approx) {
  d <- nrow(H)
  if (approx == "meanfield") {
    h <- diag(H)
    return(diag(ifelse(is.finite(h) & h > 0, 1 / sqrt(h), 1), d))
  }
  L <- pre_chol(H)
  if (is.null(L)) init_chol(H, "meanfield") else L
}

# Lower Cholesky factor of H^{-1}, the preconditioner of the locations (NULL
# when H is not positive definite).
pre_chol <- function(H) {
  R <- tryCatch(chol(H), error = function(e) NULL)
  if (is.null(R) || any(!is.finite(R))) return(NULL)
  t(chol(chol2inv(R)))
}

# Hessian of fn at x by central differences of the gradient (analytic or
# numerical), symmetrised.
num_hessian <- function(fn, gr, x) {
  d <- length(x)
  g <- if (is.null(gr)) function(t) num_grad(fn, t) else gr
  H <- matrix(0, d, d)
  for (i in seq_len(d)) {
    h <- 1e-4 * max(1, abs(x[i]))
    e <- replace(numeric(d), i, h)
    H[, i] <- (g(x + e) - g(x - e)) / (2 * h)
  }
  H <- (H + t(H)) / 2
  if (any(!is.finite(H))) H <- -diag(d)
  H
}

num_grad <- function(fn, x) {
  vapply(seq_along(x), function(i) {
    h <- 6e-6 * max(1, abs(x[i]))
    e <- replace(numeric(length(x)), i, h)
    (fn(x + e) - fn(x - e)) / (2 * h)
  }, 0)
}

# SGVB for the GLMs of vb_fit(): q over theta = beta (and log tau for
# gaussian) as one Gaussian.  Returns the list C_glm_cavi returns; for gaussian
# tau = NULL and the joint q is in $sgvb (q_sample() reads it).  The ELBO at
# the returned q is computed in closed form, so its Monte Carlo error is 0.
sgvb_glm <- function(model, approx, control) {
  if (approx == "block")
    stop("vb(): method = \"sgvb\" supports approx = \"fullrank\" or \"meanfield\"; use method = \"cavi\" for \"block\".", call. = FALSE)
  X <- model$X; p <- ncol(X); cn <- colnames(X)
  gauss <- model$family == 0L
  init <- glm_init(model, cn)
  st <- laplace_start(model, init, p, gauss)
  mu0 <- st$mu; H <- st$H
  L0 <- init_chol(H, approx)
  estimator <- control$estimator
  r <- .Call(C_sgvb_fit, list(type = "glm", glm = model), as.double(mu0), L0, pre_chol(H),
             control, sgvb_opts(control, approx, estimator))
  status <- r$status
  ix <- seq_len(p)
  Sj <- tcrossprod(r$L)
  mu <- r$mu[ix]
  Sb <- Sj[ix, ix, drop = FALSE]
  ex <- tryCatch(if (gauss) glm_elbo_joint(model, r$mu, Sj) else {
    e <- .Call(C_glm_elbo, model, mu, Sb, c(1, 1))
    list(elbo = e$elbo, loglik = e$loglik, kl = e$kl)
  }, error = function(e) NULL)
  mc_se <- 0
  if (is.null(ex)) { # numerically singular q: keep the Monte Carlo ELBO
    ex <- list(elbo = r$elbo, loglik = NA_real_, kl = NA_real_)
    mc_se <- r$elbo_se
  }
  # a convergence claim needs a finite ELBO at the returned q
  if (status == 0L && !is.finite(ex$elbo)) status <- vb_status_codes[["nonfinite"]]
  em <- drop(X %*% mu) + model$offset
  ev <- rowSums((X %*% Sb) * X)
  nm <- c(cn, if (gauss) "log_tau")
  list(mu = mu, Sigma = Sb, elbo = ex$elbo, trace = r$trace, loglik = ex$loglik, kl = ex$kl,
       iterations = r$iterations, status = status, converged = status == 0L, tau = NULL,
       eta_mean = em, eta_var = ev, mc_se = mc_se, blocks = NULL,
       sgvb = list(mu = setNames(r$mu, nm), Sigma = structure(Sj, dimnames = list(nm, nm)),
                   L = r$L, smooth = r$smooth, eta = r$eta, n_grad = r$n_grad,
                   n_eval = r$n_eval, n_nonfinite = r$n_nonfinite, elbo_mc = r$elbo,
                   elbo_mc_se = r$elbo_se,
                   estimator = estimator, newton_steps = st$steps))
}

# Start of GLM SGVB: damped Newton steps on log p(y, theta) from the CAVI
# starting values to the posterior mode (gaussian: beta at tau fixed, then
# log tau at its conditional mode), and the curvature there (X'WX plus the
# prior precision; for laplace priors 1/scale^2 stands in).  q starts at
# this Laplace approximation, whose Cholesky factor also whitens the steps.
# Each Newton step costs one log-joint gradient and one X'WX.
laplace_start <- function(model, init, p, gauss) {
  X <- model$X
  beta <- init[seq_len(p)]
  ltau <- if (gauss) log(init[p + 1L] / init[p + 2L]) else numeric(0)
  lj <- function(b) .Call(C_glm_log_joint, model, matrix(c(b, ltau)))
  curv <- function(b) {
    eta <- drop(X %*% b) + model$offset
    w <- switch(model$family + 1L, exp(ltau) * model$weights, model$weights * exp(eta),
                { pr <- plogis(eta); model$weights * pr * (1 - pr) })
    crossprod(X, X * w) + diag(1 / model$prior_scale^2, p)
  }
  cur <- lj(beta)
  steps <- 0L
  for (it in seq_len(50L)) {
    H <- curv(beta)
    dir <- tryCatch(solve(H, cur$gradient[seq_len(p)]), error = function(e) NULL)
    if (is.null(dir) || any(!is.finite(dir))) break
    a <- 1
    repeat {
      nxt <- lj(beta + a * dir)
      if (is.finite(nxt$value) && nxt$value >= cur$value) break
      a <- a / 2
      if (a < 1e-8) break
    }
    steps <- steps + 1L
    if (a < 1e-8) break
    dec <- nxt$value - cur$value
    beta <- beta + a * dir
    cur <- nxt
    if (dec <= 1e-8 * (1 + abs(cur$value))) break
  }
  H <- curv(beta)
  if (gauss) {
    # conditional mode of log tau: (a0 + n/2) - tau (b0 + sum w r^2 / 2) = 0
    pos <- model$weights > 0
    r <- model$y - drop(X %*% beta) - model$offset
    ss <- model$tau_prior[2] + 0.5 * sum(model$weights[pos] * r[pos]^2)
    ltau <- log((model$tau_prior[1] + sum(pos) / 2) / ss)
    H <- crossprod(X, X * (exp(ltau) * model$weights)) + diag(1 / model$prior_scale^2, p)
    H <- rbind(cbind(H, 0), c(rep(0, p), sum(pos) / 2 + model$tau_prior[1]))
  }
  list(mu = as.double(c(beta, ltau)), H = H, steps = steps)
}

# Closed-form ELBO of a gaussian GLM at a joint Gaussian q over (beta, l),
# l = log tau.  With r_t = y_t - x_t'beta, E[e^l r^2] = E[e^l] E~[r^2] under
# the tilted law where r has mean m_r + Cov(r, l) and the same variance.
glm_elbo_joint <- function(model, mu, Sigma) {
  X <- model$X; p <- ncol(X); ix <- seq_len(p); d <- p + 1L
  ml <- mu[d]; s2 <- Sigma[d, d]; cbl <- Sigma[ix, d]
  Sb <- Sigma[ix, ix, drop = FALSE]
  w <- model$weights; pos <- w > 0
  mr <- model$y - model$offset - drop(X %*% mu[ix])
  vr <- rowSums((X %*% Sb) * X)
  mt <- mr - drop(X %*% cbl)
  Et <- exp(ml + s2 / 2)
  loglik <- sum(0.5 * (log(w[pos]) + ml - log(2 * pi) - w[pos] * Et * (mt[pos]^2 + vr[pos])))
  loc <- model$prior_location; b <- model$prior_scale; sb <- sqrt(diag(Sb))
  dd <- mu[ix] - loc
  z <- dd / sb
  ep <- ifelse(model$prior_type == 0L,
               -0.5 * (log(2 * pi) + 2 * log(b)) - 0.5 * (dd^2 + sb^2) / b^2,
               -log(2 * b) - (sb * sqrt(2 / pi) * exp(-z^2 / 2) + dd * (2 * pnorm(z) - 1)) / b)
  a0 <- model$tau_prior[1]; b0 <- model$tau_prior[2]
  eprior <- sum(ep) + a0 * log(b0) - lgamma(a0) + a0 * ml - b0 * Et
  R <- chol(Sigma)
  H <- sum(log(diag(R))) + d / 2 * (1 + log(2 * pi))
  kl <- -(eprior + H)
  list(elbo = loglik - kl, loglik = loglik, kl = kl)
}

#' @export
print.vbdensity <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat("Variational Bayes fit of a log density (", x$approx, " Gaussian q, SGVB, ",
      x$estimator, " gradients)\n", sep = "")
  if (!is.null(x$call)) cat("Call: ", paste(deparse(x$call), collapse = "\n"), "\n", sep = "")
  cat("\n")
  print(cbind(mean = x$coefficients, sd = sqrt(diag(x$vcov))), digits = digits)
  cat(sprintf("\nELBO %.3f (Monte Carlo se %.2g)\n", x$elbo, x$mc_se))
  cat(sprintf("%s in %d steps (step size %.3g), %.3g s\n",
              if (isTRUE(x$converged)) "Converged" else "NOT converged", x$iterations,
              x$sgvb$eta, x$time))
  invisible(x)
}

#' @export
summary.vbdensity <- function(object, level = 0.95, ...) {
  check_level(level)
  sd <- sqrt(diag(object$vcov))
  a <- (1 - level) / 2
  ci <- outer(sd, stats::qnorm(c(a, 1 - a))) + object$coefficients
  colnames(ci) <- paste(format(100 * c(a, 1 - a), trim = TRUE), "%")
  tab <- cbind(Mean = object$coefficients, SD = sd, ci)
  structure(list(call = object$call, approx = object$approx, estimator = object$estimator,
                 coefficients = tab, elbo = object$elbo, mc_se = object$mc_se,
                 converged = object$converged, iterations = object$iterations,
                 status = object$status, sgvb = object$sgvb, level = level),
            class = "summary.vbdensity")
}

#' @export
print.summary.vbdensity <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat("Variational Bayes fit of a log density (", x$approx, " Gaussian q, SGVB, ",
      x$estimator, " gradients)\n", sep = "")
  if (!is.null(x$call)) cat("Call: ", paste(deparse(x$call), collapse = "\n"), "\n", sep = "")
  cat("\nApproximate posterior:\n")
  printCoefmat(x$coefficients, digits = digits, has.Pvalue = FALSE, P.values = FALSE,
               cs.ind = 1:2, tst.ind = integer(0))
  cat(sprintf("\nELBO = E_q[log density] + entropy(q) = %.4f  (Monte Carlo se %.3g)\n",
              x$elbo, x$mc_se))
  cat("(a lower bound on the log normalising constant of the density)\n")
  cat(sprintf("%s in %d steps; final step size %.3g; %g gradient and %g function evaluations.\n",
              if (isTRUE(x$converged)) "Converged" else "NOT converged", x$iterations,
              x$sgvb$eta, x$sgvb$n_grad, x$sgvb$n_eval))
  invisible(x)
}

# The vb_posterior interface of vb_diagnose() (generics in R/methods.R):
# draws of theta from q = N(mu, L L') with log q at each, one per column ...
q_sample.vbdensity <- function(fit, S) {
  L <- fit$sgvb$L
  d <- length(fit$coefficients)
  Z <- matrix(stats::rnorm(d * S), d, S)
  theta <- unname(fit$coefficients) + L %*% Z
  rownames(theta) <- names(fit$coefficients)
  logq <- -0.5 * colSums(Z^2) - 0.5 * d * log(2 * pi) - sum(log(diag(L)))
  list(theta = theta, logq = logq)
}

# ... and the user's log density at the columns of theta.
log_joint.vbdensity <- function(fit, theta) {
  theta <- as.matrix(theta)
  vapply(seq_len(ncol(theta)), function(s) as.double(fit$target(theta[, s])), 0)
}
