#' Variational Bayes for any log density by stochastic gradients
#'
#' Fits a Gaussian q = N(mu, L L') on the unconstrained scale to the
#' unnormalised density exp(log_density(theta)) by maximising the evidence
#' lower bound `ELBO = E_q[log p(theta)] + H(q)` with stochastic gradients
#' (SGVB): the pathwise (`"reparam"`) or the score-function (`"score"`)
#' estimator, Adam steps measured in posterior standard deviations, and a
#' stop only once the smoothed ELBO has stalled (see [vb_control()] for the
#' knobs).  From the Laplace start the run begins at its final step size
#' (trial runs at larger steps would first move q away from a start that is
#' already close); otherwise the step size is found by short trial runs.
#' The per-step cost beyond the log density is O(d^2) for `"fullrank"` and
#' O(d) for `"meanfield"` (plus two triangular products, O(d^2), for the
#' whitened locations).
#'
#' **Start at the mode.** With `init_method = "mode"` (the default) the mode
#' of the (unconstrained) log density is found from `init` by quasi-Newton
#' steps ([stats::optim()], `"BFGS"`, with the gradient), the Hessian there is
#' taken by central differences of the gradient, and q starts at that Laplace
#' approximation N(mode, -H^-1) (mean-field: the diagonal 1 / -H_jj); its
#' Cholesky factor also whitens the steps.  The Laplace approximation's own
#' ELBO is reported as `elbo_laplace`, so the gain of VB over it is visible.
#' When the mode search fails or the Hessian is not negative definite, a
#' message says so and q starts at the best point found (or `init`) with a
#' safe scale: standard deviations 1 / sqrt(-H_jj) where that is finite, but
#' never above 1 on the unconstrained scale.  `init_method = "given"` starts
#' at `init` with that safe scale.
#'
#' **Bounded parameters.** `lower` and `upper` (recycled, `-Inf`/`Inf`
#' allowed) use Stan's transforms: theta = lower + exp(u) with one lower
#' bound, upper - exp(u) with one upper bound, and
#' lower + (upper - lower) plogis(u) with both; the log Jacobian is added to
#' the log density internally.  q is Gaussian in u (kept in
#' `unconstrained`); `coef`, `vcov`, `summary`, `confint` and `draws` report
#' theta, with means and intervals from draws when a bound makes q
#' non-Gaussian on that scale.
#'
#' **Value and gradient in one call.** `log_density` may return its value with
#' a `"gradient"` attribute (the [stats::nlm()] convention), so shared work is
#' done once; else `gradient` is used; else central differences (2 d
#' evaluations per gradient, all counted in `n_eval`).
#'
#' **Failed evaluations.** An R error, a non-finite value or an unusable
#' gradient at a draw makes that draw a rejected one (log density -Inf), as in
#' Stan; rejected draws are counted (`n_rejected`).  Only when 100 draws in a
#' row are rejected does the fit stop, with an error that quotes the last
#' failure and the parameter values where it happened.  When draws of the
#' final phase or of the final ELBO estimate are rejected, q puts mass where
#' the density is not finite: the ELBO is `-Inf` and the fit is not converged.
#'
#' The ELBO is a lower bound on log of the integral of exp(log_density) over
#' theta, so it is the log evidence when `log_density` is log p(y, theta).
#'
#' @param log_density Function of the parameter vector `theta` (and `...`)
#'   returning log p(y, theta) up to a constant, a single number, optionally
#'   with attribute `"gradient"` (its gradient in theta).
#' @param init Starting values inside the bounds (named numeric vector; the
#'   names label the parameters).
#' @param gradient Optional function of `theta` (and `...`) returning the
#'   gradient of `log_density`; used when the value has no `"gradient"`
#'   attribute; `NULL` and no attribute use central differences.
#' @param lower,upper Bounds of each parameter (recycled to the length of
#'   `init`; `-Inf` and `Inf` for none).
#' @param approx `"fullrank"` (dense covariance) or `"meanfield"` (diagonal).
#' @param estimator `"reparam"` or `"score"`.
#' @param init_method `"mode"` (start at the Laplace approximation at the
#'   mode found from `init`) or `"given"` (start at `init`).
#' @param control A [vb_control()] list (`samples`, `step_size`, `sgvb_maxit`,
#'   ... apply; its `estimator` is overridden by the argument).
#' @param ... Further arguments passed to `log_density` and `gradient`.
#' @return An object of class `c("vbdensity", "vb_posterior")` with
#'   `coefficients` (posterior means of theta), `vcov`, `elbo` (Monte Carlo
#'   estimate at the final q, from draws in blocks of 100 until its standard
#'   error `mc_se` is below 0.025 sqrt(1000 / elbo_samples) nats, at most
#'   `elbo_samples` draws; `-Inf` when
#'   draws of the final phase were rejected), `elbo_laplace` (and
#'   `elbo_laplace_se`, estimated the same way), `elbo_trace` (per-step estimates), `converged`,
#'   `iterations`, `status`, `n_eval` (log density evaluations, those of
#'   numerical gradients included), `n_grad` (gradients), `n_rejected`,
#'   `start` (how q was started), `unconstrained` (mu, Sigma and L of q on the
#'   unconstrained scale), `time` and `sgvb` (run details).  `print`,
#'   `summary`, `coef`, `vcov`, `confint`, `elbo`, `plot`, `draws` and
#'   [vb_diagnose()] work on it.
#' @seealso [vb()] with `method = "sgvb"` for GLMs.
#' @examples
#' set.seed(1)
#' S <- matrix(c(1, 0.5, 0.5, 2), 2)
#' P <- solve(S)
#' ld <- function(th) structure(-0.5 * sum(th * (P %*% th)), gradient = -drop(P %*% th))
#' fit <- vb_density(ld, init = c(a = 1, b = -1),
#'                   control = vb_control(quiet = TRUE, sgvb_maxit = 2000))
#' coef(fit)
#' vcov(fit)
#' # a Gamma(3, 2) density for a positive parameter
#' g <- vb_density(function(x) dgamma(x, 3, 2, log = TRUE), init = c(rate = 1), lower = 0,
#'                 control = vb_control(quiet = TRUE, sgvb_maxit = 2000))
#' coef(g)
#' @export
vb_density <- function(log_density, init, gradient = NULL, lower = -Inf, upper = Inf,
                       approx = c("fullrank", "meanfield"), estimator = c("reparam", "score"),
                       init_method = c("mode", "given"), control = vb_control(), ...) {
  cl <- match.call()
  if (!is.function(log_density))
    stop("vb_density(): 'log_density' must be a function of the parameter vector.", call. = FALSE)
  if (!is.null(gradient) && !is.function(gradient))
    stop("vb_density(): 'gradient' must be a function of the parameter vector, or NULL for numerical differences.", call. = FALSE)
  if (!is.numeric(init) || length(init) < 1L || any(!is.finite(init)))
    stop("vb_density(): 'init' must be a numeric vector of finite starting values.", call. = FALSE)
  approx <- match.arg(approx)
  estimator <- match.arg(estimator)
  init_method <- match.arg(init_method)
  d <- length(init)
  nm <- if (is.null(names(init))) paste0("theta", seq_len(d)) else names(init)
  tf <- bound_transform(lower, upper, d)
  x0 <- as.double(init)
  if (any(x0 <= tf$lower | x0 >= tf$upper))
    stop(sprintf("vb_density(): 'init' must lie strictly inside the bounds; not so for %s.",
                 paste(nm[x0 <= tf$lower | x0 >= tf$upper], collapse = ", ")), call. = FALSE)
  fn <- function(x) log_density(x, ...)
  gr <- if (is.null(gradient)) NULL else function(x) gradient(x, ...)
  # the user's value (and gradient) at init, checked here so that a bad
  # function is an error with a plain message before any fitting
  f0 <- fn(x0)
  if (!is.numeric(f0) || length(f0) != 1L || !is.finite(f0))
    stop("vb_density(): 'log_density(init)' must be a single finite number; choose starting values inside the support.", call. = FALSE)
  if (is.null(attr(f0, "gradient")) && !is.null(gr)) {
    g0 <- gr(x0)
    if (!is.numeric(g0) || length(g0) != d || any(!is.finite(g0)))
      stop(sprintf("vb_density(): 'gradient(init)' must be a finite numeric vector of length %d.", d), call. = FALSE)
  } else if (!is.null(attr(f0, "gradient"))) {
    g0 <- attr(f0, "gradient")
    if (!is.numeric(g0) || length(g0) != d || any(!is.finite(g0)))
      stop(sprintf("vb_density(): the \"gradient\" attribute of 'log_density(init)' must be a finite numeric vector of length %d.", d), call. = FALSE)
  }
  # the log density of u = the unconstrained parameters, log Jacobian included
  ld_u <- function(u, grad = TRUE) {
    x <- tf$constrain(u)
    v <- fn(x)
    if (!is.numeric(v) || length(v) != 1L)
      stop("'log_density' must return a single number", call. = FALSE)
    f <- as.double(v) + tf$log_jac(u)
    if (!grad || !is.finite(f)) return(f)
    g <- attr(v, "gradient")
    if (is.null(g) && !is.null(gr)) {
      g <- gr(x)
      what <- "'gradient'"
    } else what <- "the \"gradient\" attribute of 'log_density'"
    if (is.null(g)) return(f)
    ok <- tryCatch(check_user_grad(g, d, v, what, finite = FALSE), error = function(e) e)
    if (inherits(ok, "error"))
      stop(errorCondition(sprintf("vb_density(): %s (at theta = c(%s)).", conditionMessage(ok),
                                  paste(format(x, digits = 4), collapse = ", ")),
                          class = "vb_density_error", call = NULL))
    g <- as.double(g)
    gu <- g * tf$dx_du(u) + tf$dlog_jac(u)
    gu[!is.finite(g)] <- g[!is.finite(g)] # a non-finite gradient stays visible as such
    structure(f, gradient = gu)
  }
  numeric_grad <- is.null(gr) && is.null(attr(f0, "gradient"))
  constrain <- if (tf$identity) NULL else function(U) {
    X <- apply(as.matrix(U), 2L, tf$constrain)
    X <- matrix(X, nrow = d)
    rownames(X) <- nm
    X
  }
  fit_density(ld_u, tf$unconstrain(x0), approx = approx, init_method = init_method,
              control = control, constrain = constrain, par_names = nm,
              estimator = estimator, numeric_grad = numeric_grad, what = "vb_density()",
              extra_evals = 1 + (!is.null(gr) && is.null(attr(f0, "gradient"))),
              call = cl, unc_names = if (tf$identity) nm else tf$unc_names(nm))
}

# A user gradient must be a finite numeric vector of length d where the log
# density is finite (an error otherwise: the draw is then rejected).
check_user_grad <- function(g, d, f, what, finite = TRUE) {
  if (!(is.numeric(g) || is.logical(g)) || length(g) != d)
    stop(sprintf("%s must return a numeric vector of length %d", what, d), call. = FALSE)
  if (!is.double(g) && anyNA(g))
    stop(sprintf("%s returned NA (as %s) where 'log_density' is %g; it must return finite numbers wherever the log density is finite",
                 what, typeof(g), f), call. = FALSE)
  if (!is.numeric(g))
    stop(sprintf("%s must return a numeric vector of length %d, not a %s vector", what, d, typeof(g)), call. = FALSE)
  if (finite && any(!is.finite(g)))
    stop(sprintf("%s returned non-finite values (%s) where 'log_density' is %g; it must be finite wherever the log density is finite",
                 what, paste(format(g[!is.finite(g)]), collapse = ", "), f), call. = FALSE)
  invisible(g)
}

# Stan's transforms of bounded parameters, per coordinate: x = lb + exp(u)
# (lower bound only), ub - exp(u) (upper only), lb + (ub - lb) plogis(u)
# (both), x = u (none); the log Jacobian log |dx/du| and its derivative.
bound_transform <- function(lower, upper, d) {
  chk <- function(b, nm) {
    if (!is.numeric(b) || !length(b) || anyNA(b) || !(length(b) %in% c(1L, d)))
      stop(sprintf("vb_density(): '%s' must be numbers (-Inf/Inf allowed), one or one per parameter (%d).",
                   nm, d), call. = FALSE)
    rep_len(as.double(b), d)
  }
  lb <- chk(lower, "lower"); ub <- chk(upper, "upper")
  if (any(lb == Inf) || any(ub == -Inf) || any(lb >= ub))
    stop("vb_density(): every 'lower' must be below its 'upper' (and neither at the wrong infinity).", call. = FALSE)
  lo <- is.finite(lb) & !is.finite(ub)
  up <- !is.finite(lb) & is.finite(ub)
  two <- is.finite(lb) & is.finite(ub)
  w <- ub - lb
  list(lower = lb, upper = ub, identity = !any(lo | up | two),
       constrain = function(u) {
         x <- u
         x[lo] <- lb[lo] + exp(u[lo])
         x[up] <- ub[up] - exp(u[up])
         x[two] <- lb[two] + w[two] * stats::plogis(u[two])
         x
       },
       unconstrain = function(x) {
         u <- x
         u[lo] <- log(x[lo] - lb[lo])
         u[up] <- log(ub[up] - x[up])
         u[two] <- stats::qlogis((x[two] - lb[two]) / w[two])
         u
       },
       log_jac = function(u)
         sum(u[lo | up]) + sum(log(w[two]) + stats::plogis(u[two], log.p = TRUE) +
                                 stats::plogis(-u[two], log.p = TRUE)),
       dx_du = function(u) {
         s <- rep(1, d)
         s[lo] <- exp(u[lo])
         s[up] <- -exp(u[up])
         p <- stats::plogis(u[two])
         s[two] <- w[two] * p * (1 - p)
         s
       },
       dlog_jac = function(u) {
         s <- rep(0, d)
         s[lo | up] <- 1
         s[two] <- 1 - 2 * stats::plogis(u[two])
         s
       },
       unc_names = function(nm) {
         nm[lo] <- sprintf("log(%s - lower)", nm[lo])
         nm[up] <- sprintf("log(upper - %s)", nm[up])
         nm[two] <- sprintf("logit(%s)", nm[two])
         nm
       })
}

# The engine behind vb_density() (and vb_stan()): SGVB on an unconstrained
# vector u, started at the mode.
#   log_density(u)  the log density of u (Jacobian included), a number,
#                   optionally with attribute "gradient"; when it has an
#                   argument `grad`, it is called with grad = FALSE where only
#                   the value is needed.  Without a gradient attribute the
#                   gradient is taken by central differences (2 d evaluations).
#   init            the starting u (length d); approx, init_method, control
#                   as in vb_density().
#   constrain       NULL (identity) or a function mapping a d x S matrix of u
#                   to an m x S matrix of constrained values with rownames
#                   par_names: coef, vcov, summary, confint and draws report
#                   those (means and covariances from draws).
#   ...             estimator ("reparam"), what (the caller's name for
#                   messages), call, unc_names (names of u), numeric_grad
#                   (TRUE: never look for the attribute).
# Failed evaluations (R errors, non-numbers, non-finite values, unusable
# gradients) are rejected draws (-Inf), counted; 100 in a row stop the fit
# with the last failure's message and the (constrained) parameter values.
fit_density <- function(log_density, init, approx = c("fullrank", "meanfield"),
                        init_method = c("mode", "given"), control = vb_control(),
                        constrain = NULL, par_names = NULL, ...) {
  t0 <- proc.time()[["elapsed"]]
  opt <- list(...)
  what <- if (is.null(opt$what)) "fit_density()" else opt$what
  estimator <- if (is.null(opt$estimator)) "reparam" else match.arg(opt$estimator, c("reparam", "score"))
  approx <- match.arg(approx)
  init_method <- match.arg(init_method)
  control <- as_vb_control(control)
  if (!is.function(log_density))
    stop(sprintf("%s: 'log_density' must be a function of the parameter vector.", what), call. = FALSE)
  if (!is.numeric(init) || length(init) < 1L || any(!is.finite(init)))
    stop(sprintf("%s: 'init' must be a numeric vector of finite starting values.", what), call. = FALSE)
  if (!is.null(constrain) && !is.function(constrain))
    stop(sprintf("%s: 'constrain' must be NULL or a function of a matrix of draws.", what), call. = FALSE)
  d <- length(init)
  unc <- opt$unc_names
  if (is.null(unc)) unc <- if (!is.null(names(init))) names(init) else
    if (is.null(constrain) && length(par_names) == d) par_names else paste0("u", seq_len(d))
  if (is.null(par_names)) par_names <- unc
  u0 <- as.double(init)
  ev <- density_evaluator(log_density, d, isTRUE(opt$numeric_grad), constrain, what)

  # ---- the start: mode and Laplace approximation ----
  st <- density_start(ev, u0, approx, init_method, what)
  elbo_lap <- c(NA_real_, NA_real_)
  if (isTRUE(st$laplace)) {
    elbo_lap <- laplace_elbo(ev, st$mu, st$Lfull, control$elbo_samples)
    # a mode with tiny curvature (a flat top) gives a Laplace q far too wide:
    # compare with the safe scale, sds capped at 1
    sdl <- sqrt(rowSums(st$Lfull^2))
    safe <- if (!is.finite(elbo_lap[1]) || any(sdl > 1))
      laplace_elbo(ev, st$mu, diag(pmin(sdl, 1), length(sdl)), min(control$elbo_samples, 200L))
    else c(-Inf, 0)
    if (!is.finite(elbo_lap[1]) ||
        (is.finite(safe[1]) && safe[1] > elbo_lap[1] + 4 * sqrt(elbo_lap[2]^2 + safe[2]^2))) {
      st <- density_start(ev, st$mu, approx, "given", what,
                          note = sprintf("the Laplace approximation at the mode has ELBO %.4g, below that of a start with standard deviations of at most 1 (%.4g)",
                                         elbo_lap[1], safe[1]))
    }
  }

  # ---- SGVB ----
  target <- list(type = "r", fn = ev$engine_fn, d = as.integer(d))
  r <- .Call(C_sgvb_fit, target, st$mu, st$L0, st$pre, control,
             sgvb_opts(control, approx, estimator, laplace = isTRUE(st$laplace)))
  # the engine has saved the RNG state; now the user's error may surface
  if (r$status == vb_status_codes[["interrupted"]])
    check_status(r$status, what, r$iterations, control$sgvb_tol, "sgvb_maxit")
  if (!is.null(r$error)) stop(r$error)
  if (isTRUE(r$aborted)) stop(ev$abort_message(r), call. = FALSE)
  status <- r$status
  if (status == 0L && !is.finite(r$elbo)) status <- vb_status_codes[["nonfinite"]]
  Sigma <- tcrossprod(r$L)
  dimnames(Sigma) <- list(unc, unc)
  mu <- stats::setNames(r$mu, unc)
  if (is.null(constrain)) {
    cf <- stats::setNames(r$mu, par_names)
    V <- structure(Sigma, dimnames = list(par_names, par_names))
    sdraws <- NULL
  } else {
    U <- mu + r$L %*% matrix(stats::rnorm(d * 4000L), d, 4000L)
    sdraws <- constrain_draws(constrain, U, par_names, what)
    cf <- rowMeans(sdraws)
    V <- stats::cov(t(sdraws))
  }
  cnt <- ev$counts()
  fit <- list(coefficients = cf, vcov = V, elbo = r$elbo, mc_se = r$elbo_se,
              elbo_laplace = elbo_lap[1], elbo_laplace_se = elbo_lap[2],
              elbo_trace = r$trace, elbo_terms = c(elbo = r$elbo), converged = status == 0L,
              iterations = r$iterations, status = status, approx = approx, method = "sgvb",
              estimator = estimator, control = control, call = opt$call,
              target = ev$value_fn, constrain = constrain, par_names = par_names,
              unconstrained = list(mu = mu, Sigma = Sigma, L = r$L),
              summary_draws = sdraws, start = st[c("method", "laplace", "note", "mode", "optim")],
              n_eval = cnt[["n_eval"]] + (opt$extra_evals %||% 0), n_grad = cnt[["n_grad"]],
              n_rejected = cnt[["n_fail"]] + cnt[["n_nonfinite"]],
              last_failure = ev$last_failure(),
              sgvb = list(mu = mu, Sigma = Sigma, L = r$L, smooth = r$smooth,
                          eta = r$eta, n_grad = cnt[["n_grad"]], n_eval = cnt[["n_eval"]],
                          n_averaged = r$n_averaged, decays = r$decays,
                          n_nonfinite = r$n_nonfinite, estimator = estimator))
  fit$time <- proc.time()[["elapsed"]] - t0
  class(fit) <- c("vbdensity", "vb_posterior")
  check_status(status, what, r$iterations, control$sgvb_tol, "sgvb_maxit")
  fit
}

constrain_draws <- function(constrain, U, par_names, what) {
  X <- constrain(U)
  if (!is.matrix(X) || !is.numeric(X) || ncol(X) != ncol(U))
    stop(sprintf("%s: 'constrain' must return a numeric matrix with one column per draw.", what), call. = FALSE)
  if (is.null(rownames(X)) && length(par_names) == nrow(X)) rownames(X) <- par_names
  X
}

# Evaluations of the unconstrained log density with their bookkeeping:
# counts (log density calls, numerical-gradient calls included; gradients;
# failures; non-finite values) and the last failure (message and where).
density_evaluator <- function(log_density, d, numeric_grad, constrain, what) {
  has_grad_arg <- "grad" %in% names(formals(log_density))
  n_eval <- 0; n_grad <- 0; n_fail <- 0; n_nonfinite <- 0
  last <- NULL
  where <- function(u) {
    x <- if (is.null(constrain)) u else tryCatch(drop(constrain(matrix(u))), error = function(e) u)
    sprintf("theta = c(%s)", paste(format(x, digits = 4), collapse = ", "))
  }
  fail <- function(msg, u) {
    n_fail <<- n_fail + 1
    last <<- list(message = msg, where = where(u), theta = u)
    -Inf
  }
  call1 <- function(u, grad) {
    n_eval <<- n_eval + 1
    if (has_grad_arg) log_density(u, grad = grad) else log_density(u)
  }
  # value (a double, -Inf on failure) and, when grad, the gradient or NULL
  # strict = FALSE (the mode search): a non-finite gradient where the value
  # is finite (overflow far out) makes the point unusable instead of an error
  evaluate <- function(u, grad, strict = TRUE) {
    v <- tryCatch(call1(u, grad), error = function(e) e)
    if (inherits(v, "vb_density_error")) stop(v)
    if (inherits(v, "error")) return(list(f = fail(conditionMessage(v), u), g = NULL))
    if (!is.numeric(v) || length(v) != 1L)
      return(list(f = fail("'log_density' must return a single number", u), g = NULL))
    f <- as.double(v)
    if (!is.finite(f)) {
      n_nonfinite <<- n_nonfinite + 1
      last <<- list(message = sprintf("the log density was %s", format(f)),
                                       where = where(u), theta = u, nonfinite = TRUE)
      return(list(f = -Inf, g = NULL))
    }
    if (!grad) return(list(f = f, g = NULL))
    g <- if (numeric_grad) NULL else attr(v, "gradient")
    if (is.null(g)) {
      g <- vapply(seq_len(d), function(i) {
        h <- 6e-6 * max(1, abs(u[i]))
        e <- replace(numeric(d), i, h)
        fp <- tryCatch(as.double(call1(u + e, FALSE)), error = function(e) NaN)
        fm <- tryCatch(as.double(call1(u - e, FALSE)), error = function(e) NaN)
        if (length(fp) != 1L || length(fm) != 1L) NaN else (fp - fm) / (2 * h)
      }, 0)
      if (any(!is.finite(g))) {
        n_nonfinite <<- n_nonfinite + 1
        return(list(f = -Inf, g = NULL)) # differences across the edge of the support
      }
    } else {
      # a gradient that is unusable where the value is finite breaks the
      # contract: an error (not a rejected draw, which would bias q)
      if (!strict && is.numeric(g) && length(g) == d && any(!is.finite(g))) {
        n_nonfinite <<- n_nonfinite + 1
        return(list(f = -Inf, g = NULL))
      }
      ok <- tryCatch(check_user_grad(g, d, f, "'gradient'"), error = function(e) e)
      if (inherits(ok, "error"))
        stop(errorCondition(sprintf("%s: %s (at %s).", what, conditionMessage(ok), where(u)),
                            class = "vb_density_error", call = NULL))
    }
    n_grad <<- n_grad + 1
    list(f = f, g = as.double(g))
  }
  list(
    evaluate = evaluate,
    # the C engine's target: c(f) or c(f, gradient); an interrupt comes back
    # as the condition (the engine stops and restores the RNG)
    engine_fn = function(theta, grad) {
      tryCatch({
        r <- evaluate(theta, grad)
        if (grad && !is.null(r$g)) c(r$f, r$g) else r$f
      }, interrupt = function(e) e, vb_density_error = function(e) e,
         error = function(e) fail(conditionMessage(e), theta))
    },
    # value only, -Inf on failure (vb_diagnose()'s log_joint)
    value_fn = function(u) evaluate(u, FALSE)$f,
    counts = function() c(n_eval = n_eval, n_grad = n_grad, n_fail = n_fail, n_nonfinite = n_nonfinite),
    last_failure = function() last,
    abort_message = function(r) {
      lf <- if (is.null(last)) list(message = "the log density was not finite", where = "")
            else last
      head <- if (r$consecutive_bad >= 100L)
        sprintf("%d draws from q in a row were rejected", as.integer(r$consecutive_bad))
      else "the step-size search found no step size at which most draws from q were accepted"
      sprintf(paste0("%s: stopped: %s (%g rejected in all). ",
                     "The last failure: %s (at %s). q was centred at c(%s) (unconstrained scale). ",
                     "Check that the log density is finite and error-free on its whole support, ",
                     "and give bounded parameters 'lower'/'upper'."),
              what, head, n_fail + n_nonfinite, lf$message, lf$where,
              paste(format(r$mu, digits = 4), collapse = ", "))
    })
}

# The start of q.  "mode": BFGS on -log p from u0 with the gradient, then the
# Hessian at the optimum by central differences of the gradient; q starts at
# the Laplace approximation when the search converged and -H is positive
# definite.  Otherwise (and for "given"), a message, and the best point found
# (or u0) with a safe diagonal scale: sd_j = 1 / sqrt(-H_jj) where finite and
# positive, capped at 1 (the curvature far from the mode can be tiny).
density_start <- function(ev, u0, approx, init_method, what, note = NULL) {
  d <- length(u0)
  fg <- function(u) ev$evaluate(u, TRUE, strict = FALSE)
  mu <- u0; op <- NULL; laplace <- FALSE
  if (init_method == "mode") {
    cache <- new.env()
    get_fg <- function(u) {
      if (!identical(cache$u, u)) { cache$u <- u; cache$r <- fg(u) }
      cache$r
    }
    op <- tryCatch(stats::optim(u0, function(u) { r <- get_fg(u); if (is.finite(r$f)) -r$f else Inf },
                                function(u) {
                                  r <- get_fg(u)
                                  if (is.null(r$g)) stop("no finite gradient at a point of the mode search")
                                  -r$g
                                }, method = "BFGS", control = list(maxit = 2000L, reltol = 1e-12)),
                   error = function(e) e)
    if (inherits(op, "vb_density_error")) stop(op)
    if (inherits(op, "error")) {
      note <- sprintf("the mode search failed (%s)", conditionMessage(op))
      op <- NULL
    } else {
      if (all(is.finite(op$par)) && is.finite(op$value) && -op$value >= ev$evaluate(u0, FALSE)$f)
        mu <- op$par
      if (op$convergence != 0L)
        note <- sprintf("the mode search did not converge (optim code %d after %d evaluations)",
                        op$convergence, op$counts[[1]])
    }
  }
  H <- density_hessian(fg, mu)
  nd <- !is.null(H) && !is.null(pre_chol(-H))
  if (init_method == "mode" && is.null(note) && !nd)
    note <- "the Hessian at the mode is not negative definite"
  if (init_method == "mode" && is.null(note)) {
    laplace <- TRUE
    Lfull <- pre_chol(-H)
    L0 <- if (approx == "fullrank") Lfull else diag(1 / sqrt(diag(-H)), d)
    pre <- Lfull
  } else {
    h <- if (is.null(H)) rep(NA_real_, d) else -diag(H)
    sd <- ifelse(is.finite(h) & h > 0, pmin(1 / sqrt(h), 1), 1)
    L0 <- diag(sd, d)
    pre <- L0
    Lfull <- NULL
    if (!is.null(note))
      message(sprintf("%s: %s; q starts at %s with standard deviations of at most 1 on the unconstrained scale.",
                      what, note, if (init_method == "given" || !identical(mu, u0)) "the best point found" else "'init'"))
  }
  list(method = init_method, laplace = laplace, note = note, mu = as.double(mu), L0 = L0,
       pre = pre, Lfull = Lfull, mode = if (init_method == "mode") mu else NULL,
       optim = if (is.null(op)) NULL else op[c("value", "counts", "convergence")])
}

# Hessian of the log density at u by central differences of its gradient
# (analytic or numerical), symmetrised; NULL where a gradient is unavailable.
density_hessian <- function(fg, u) {
  d <- length(u)
  H <- matrix(0, d, d)
  for (i in seq_len(d)) {
    h <- 1e-4 * max(1, abs(u[i]))
    e <- replace(numeric(d), i, h)
    gp <- fg(u + e)$g; gm <- fg(u - e)$g
    if (is.null(gp) || is.null(gm)) return(NULL)
    H[, i] <- (gp - gm) / (2 * h)
  }
  H <- (H + t(H)) / 2
  if (any(!is.finite(H))) NULL else H
}

# ELBO of the Laplace approximation N(mu, L L') from at most S draws, in
# blocks of 100 until the standard error is below SGVB_ELBO_SE sqrt(1000 / S)
# (as the engine's final ELBO): the mean of log p - log q and its standard error
# (-Inf when a draw was rejected).
laplace_elbo <- function(ev, mu, L, S) {
  d <- length(mu)
  se_target <- SGVB_ELBO_SE * sqrt(1000 / S)
  r <- numeric(0)
  while (length(r) < S) {
    b <- min(100L, S - length(r))
    Z <- matrix(stats::rnorm(d * b), d, b)
    U <- mu + L %*% Z
    f <- vapply(seq_len(b), function(s) ev$evaluate(U[, s], FALSE)$f, 0)
    r <- c(r, f + 0.5 * colSums(Z^2) + 0.5 * d * log(2 * pi) + sum(log(diag(L))))
    if (any(!is.finite(r))) return(c(-Inf, NA_real_))
    if (length(r) >= 100L && stats::sd(r) / sqrt(length(r)) <= se_target) break
  }
  c(mean(r), stats::sd(r) / sqrt(length(r)))
}

#' @export
print.vbdensity <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat("Variational Bayes fit of a log density (", x$approx, " Gaussian q, SGVB, ",
      x$estimator, " gradients)\n", sep = "")
  if (!is.null(x$call)) cat("Call: ", paste(deparse(x$call), collapse = "\n"), "\n", sep = "")
  cat("\n")
  print(cbind(mean = x$coefficients, sd = sqrt(diag(x$vcov))), digits = digits)
  cat(sprintf("\nELBO %.3f (Monte Carlo se %.2g)", x$elbo, x$mc_se))
  if (is.finite(x$elbo_laplace %||% NA)) cat(sprintf("; Laplace approximation %.3f", x$elbo_laplace))
  cat("\n")
  cat(sprintf("%s in %d steps (step size %.3g), %.3g s\n",
              if (isTRUE(x$converged)) "Converged" else "NOT converged", x$iterations,
              x$sgvb$eta, x$time))
  if (isTRUE(x$n_rejected > 0)) cat(sprintf("%g rejected draws (log density failed or not finite)\n", x$n_rejected))
  invisible(x)
}

`%||%` <- function(a, b) if (is.null(a)) b else a

#' @export
summary.vbdensity <- function(object, level = 0.95, ...) {
  check_level(level)
  sd <- sqrt(diag(object$vcov))
  ci <- confint(object, level = level)
  tab <- cbind(Mean = object$coefficients, SD = sd, ci)
  structure(list(call = object$call, approx = object$approx, estimator = object$estimator,
                 coefficients = tab, elbo = object$elbo, mc_se = object$mc_se,
                 elbo_laplace = object$elbo_laplace, converged = object$converged,
                 iterations = object$iterations, status = object$status, sgvb = object$sgvb,
                 n_rejected = object$n_rejected, start = object$start,
                 bounded = !is.null(object$constrain), level = level),
            class = "summary.vbdensity")
}

#' @export
print.summary.vbdensity <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat("Variational Bayes fit of a log density (", x$approx, " Gaussian q, SGVB, ",
      x$estimator, " gradients)\n", sep = "")
  if (!is.null(x$call)) cat("Call: ", paste(deparse(x$call), collapse = "\n"), "\n", sep = "")
  cat("\nApproximate posterior", if (isTRUE(x$bounded)) " (constrained scale; from draws of q)", ":\n", sep = "")
  printCoefmat(x$coefficients, digits = digits, has.Pvalue = FALSE, P.values = FALSE,
               cs.ind = 1:2, tst.ind = integer(0))
  cat(sprintf("\nELBO = E_q[log density] + entropy(q) = %.4f  (Monte Carlo se %.3g)\n",
              x$elbo, x$mc_se))
  if (is.finite(x$elbo_laplace %||% NA))
    cat(sprintf("ELBO of the Laplace approximation at the mode: %.4f\n", x$elbo_laplace))
  cat("(a lower bound on the log normalising constant of the density)\n")
  cat(sprintf("%s in %d steps; final step size %.3g; %g gradient and %g function evaluations.\n",
              if (isTRUE(x$converged)) "Converged" else "NOT converged", x$iterations,
              x$sgvb$eta, x$sgvb$n_grad, x$sgvb$n_eval))
  if (isTRUE(x$n_rejected > 0)) cat(sprintf("%g rejected draws (log density failed or not finite).\n", x$n_rejected))
  if (!is.null(x$start$note)) cat("Start: ", x$start$note, ".\n", sep = "")
  invisible(x)
}

#' @export
confint.vbdensity <- function(object, parm, level = 0.95, ...) {
  if (is.null(object$summary_draws)) return(NextMethod())
  check_level(level)
  cf <- coef(object)
  if (missing(parm)) parm <- names(cf)
  if (!(is.character(parm) && all(parm %in% names(cf))) &&
      !(is.numeric(parm) && all(parm %in% seq_along(cf))))
    stop(sprintf("confint(): 'parm' must name coefficients (%s) or index them (1 to %d).",
                 paste(names(cf), collapse = ", "), length(cf)), call. = FALSE)
  a <- (1 - level) / 2
  ci <- t(apply(object$summary_draws, 1L, stats::quantile, probs = c(a, 1 - a), names = FALSE))
  dimnames(ci) <- list(names(cf), paste(format(100 * c(a, 1 - a), trim = TRUE), "%"))
  ci[parm, , drop = FALSE]
}

#' @rdname draws
#' @export
draws.vbdensity <- function(object, n = 1000, ...) {
  n <- check_count(n, "n")
  U <- q_sample(object, n)[["theta"]]
  X <- if (is.null(object$constrain)) U else
    constrain_draws(object$constrain, U, object$par_names, "draws()")
  out <- t(X)
  colnames(out) <- object$par_names %||% rownames(X)
  out
}

# The vb_posterior interface of vb_diagnose() (generics in R/methods.R), on
# the unconstrained scale where q is Gaussian: draws of u from
# q = N(mu, L L') with log q at each, one per column ...
q_sample.vbdensity <- function(fit, S) {
  L <- fit$sgvb$L
  mu <- fit$sgvb$mu
  d <- length(mu)
  Z <- matrix(stats::rnorm(d * S), d, S)
  theta <- unname(mu) + L %*% Z
  rownames(theta) <- names(mu)
  logq <- -0.5 * colSums(Z^2) - 0.5 * d * log(2 * pi) - sum(log(diag(L)))
  list(theta = theta, logq = logq)
}

# ... and the log density of u (log Jacobian included; -Inf where it fails).
log_joint.vbdensity <- function(fit, theta) {
  theta <- as.matrix(theta)
  vapply(seq_len(ncol(theta)), function(s) as.double(fit$target(theta[, s])), 0)
}
