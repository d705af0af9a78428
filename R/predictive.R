# Predictive coding as variational (Laplace) inference: vb_predictive_coding(),
# pc_control() and the methods of its fits (class c("vbpc", "vb_posterior")).
# The engine is src/predictive.c (C_pc_fit); this file checks the arguments,
# builds the model list, and shapes the result.

#' Tuning knobs of predictive-coding inference and learning
#'
#' @param dt Euler step of the error-unit dynamics (`inference = "euler"`).
#' @param t_max Time the dynamics run per trial: `round(t_max / dt)` states
#'   are computed, the first the starting state (the prior mean passed down
#'   the hierarchy, error units at 0), so `round(t_max / dt) - 1` Euler
#'   updates, as in the appendix of Bogacz (2017).
#' @param maxit Maximum number of learning iterations (EM sweeps over all
#'   trials; with `lr > 0`, passes of online learning).
#' @param tol Convergence tolerance of learning on the relative change of the
#'   objective (the free energy; for `q = "delta"` the joint ln p(y, x*)).
#' @param inner_maxit Maximum Newton iterations per trial.
#' @param inner_tol Inference per trial has converged when the Newton
#'   decrement g' Lambda^{-1} g / 2 (the gap to the mode's ln p, to second
#'   order) is at most `inner_tol (|ln p| + inner_tol)`; Euler runs are
#'   checked against the same criterion at `t_max`.
#' @param errors Error units of the Euler dynamics: `"instant"` (each error
#'   is its equilibrium Sigma^{-1} (x - prediction), Bogacz's exercise 2),
#'   `"dynamic"` (d eps / dt = x - prediction - Sigma eps, exercise 3) or
#'   `"interneuron"` (d eps / dt = x - prediction - e, de / dt = Sigma eps - e,
#'   exercise 5: precisions without a matrix inverse).
#' @param lr Learning rate of online learning: `0` (default) learns by batch
#'   variational EM; `lr > 0` updates the parameters after every trial by the
#'   predictive-coding rules (Delta W = lr eps f(x)', Delta Sigma =
#'   lr (eps e' - I) with e = Sigma eps, Delta mu = lr eps_L).
#' @param cov Structure of learned covariances Sigma_l: `"diagonal"`
#'   (factor analysis), `"isotropic"` (probabilistic PCA) or `"full"`.
#' @param trajectory Keep every state and error unit over time for
#'   `inference = "euler"` (`NULL`: when that is at most 10^6 numbers).
#' @param quiet If `TRUE`, no progress lines.
#' @return A list of class `pc_control`.
#' @examples
#' pc_control(dt = 0.01, t_max = 5)
#' @export
pc_control <- function(dt = 0.01, t_max = 10, maxit = 500L, tol = 1e-8, inner_maxit = 100L,
                       inner_tol = 1e-12, errors = c("instant", "dynamic", "interneuron"),
                       lr = 0, cov = c("diagonal", "isotropic", "full"), trajectory = NULL,
                       quiet = FALSE) {
  num1 <- function(v, nm, ok) {
    if (!is.numeric(v) || length(v) != 1L || !is.finite(v) || !ok(v))
      stop(sprintf("pc_control(): '%s' must be a single %s number.", nm,
                   if (nm == "lr") "non-negative" else "positive"), call. = FALSE)
    as.numeric(v)
  }
  dt <- num1(dt, "dt", function(v) v > 0)
  t_max <- num1(t_max, "t_max", function(v) v > 0)
  if (t_max < dt) stop("pc_control(): 't_max' must be at least 'dt' (one state).", call. = FALSE)
  if (t_max / dt > 1e8)
    stop("pc_control(): 't_max / dt' exceeds 1e8 Euler steps per trial; use a larger 'dt'.", call. = FALSE)
  tol <- num1(tol, "tol", function(v) v > 0)
  inner_tol <- num1(inner_tol, "inner_tol", function(v) v > 0)
  lr <- num1(lr, "lr", function(v) v >= 0)
  if (!is.null(trajectory) && (!is.logical(trajectory) || length(trajectory) != 1L || is.na(trajectory)))
    stop("pc_control(): 'trajectory' must be TRUE, FALSE or NULL.", call. = FALSE)
  if (!is.logical(quiet) || length(quiet) != 1L || is.na(quiet))
    stop("pc_control(): 'quiet' must be TRUE or FALSE.", call. = FALSE)
  structure(list(dt = dt, t_max = t_max, maxit = check_count(maxit, "maxit", 1e7),
                 tol = tol, inner_maxit = check_count(inner_maxit, "inner_maxit", 1e5),
                 inner_tol = inner_tol, errors = match.arg(errors), lr = lr,
                 cov = match.arg(cov), trajectory = trajectory, quiet = quiet),
            class = "pc_control")
}

#' Predictive coding as variational inference
#'
#' Fits a hierarchical Gaussian generative model by predictive coding: error
#' units, free energy, and learning of the weights and precisions, with the
#' free energy a variational (Laplace) evidence bound that [compare_models()]
#' and [bms()] accept.
#'
#' **Model.** Layers x_0 (the data: one row of `y` per trial), x_1, ..., x_L
#' (latent, `layers[l]` units): x_L ~ N(mu_L, Sigma_L) and
#' x_(l-1) | x_l ~ N(W_l f(x_l), Sigma_(l-1)), f applied elementwise.
#'
#' **Inference** per trial finds the mode x* of p(x_1..L | x_0) and the
#' Gaussian q = N(x*, Lambda^{-1}) with Lambda the negative Hessian
#' (variational Laplace).  The prediction errors
#' eps_l = Sigma_l^{-1} (x_l - W_(l+1) f(x_(l+1))) are the gradients of the
#' free energy: d ln p / d x_l = -eps_l + f'(x_l) * W_l' eps_(l-1).
#' `inference = "euler"` integrates these dynamics (the error-unit network of
#' Bogacz 2017, with error units instantaneous, dynamic, or with inhibitory
#' interneurons for the precisions: [pc_control()] `errors`); `"newton"`
#' takes damped Newton steps on the same free energy.  Lambda is block
#' tridiagonal over layers, so each Newton step and the covariance are one
#' block-tridiagonal solve, O(L d^3) for L layers of at most d units.
#'
#' **Free energy.** `elbo()` is the Laplace free energy
#' ln p(y, x*) + 1/2 ln|2 pi Sigma_q| summed over trials (at the learned
#' parameters).  For linear f the model is linear Gaussian, q is the exact
#' posterior and the free energy is the exact log evidence; for nonlinear f
#' it is the Laplace approximation (not a strict bound).  Its terms:
#' `loglik` = ln p(y | x_1*) - 1/2 tr(H_0 Sigma_11) (the expected accuracy to
#' second order, H_0 the data term's Hessian; exact for linear f) and
#' `kl` = `loglik - elbo` (the complexity).
#'
#' **Learning** (variational EM over trials): W_l, Sigma_(l-1) (`learn =
#' "precisions"`) and mu_L, Sigma_L (`"prior"`) maximise the expected log
#' joint under q, f linearised at x* for its moments (exact for linear f).
#' `q = "laplace"` uses the posterior means and covariances; `q = "delta"`
#' only the modes (the classical predictive-coding rule).  The delta rule
#' maximises ln p(y, x*) jointly in the states and the parameters, which is
#' unbounded in Sigma: the squared errors at the mode are smaller than their
#' posterior expectation by the posterior variance, so in the linear model
#' the update Sigma <- mean(r r') has no positive fixed point when the data
#' are not far from the prediction (e.g. one unit, x_1 ~ N(0, 1), y ~ N(x_1,
#' Sigma_0): Sigma_0 <- Sigma_0^2 v / (Sigma_0 + 1)^2 with v = mean(y^2) < 4
#' shrinks to 0), and the variances collapse; the Gaussian-q rule adds the
#' posterior variance back and converges to the maximum-likelihood value
#' (v - 1 there).  A collapse stops learning with a warning.
#' With `control = pc_control(lr = )`, learning is online (after every trial,
#' Bogacz's rules).
#'
#' User activations `list(f, df, d2f)` are R functions of a numeric vector
#' returning vectors of the same length (`d2f`, the second derivative, is
#' optional: by default a central difference of `df`).  They are evaluated
#' from the C engine inside `R_ToplevelExec`, so an error in them cannot
#' unwind through the engine: it is returned and re-raised as an R error.
#' `"linear"` and `"tanh"` run entirely in C.
#'
#' @param y Data, a numeric matrix (trials x units; a vector is one unit).
#' @param layers Sizes of the latent layers x_1, ..., x_L.
#' @param activation `"linear"`, `"tanh"`, or `list(f =, df =, d2f =)`.
#' @param weights `NULL` (random N(0, 1 / n_l) starting values, reproducible
#'   with `set.seed()`) or a list of L matrices, W_l with `n_(l-1)` rows and
#'   `layers[l]` columns.
#' @param prior_mean mu_L: one number or one per unit of the top layer.
#' @param prior_var Sigma_1, ..., Sigma_L: one positive number (every latent
#'   layer, isotropic), L numbers (one per layer), or a list of L variances
#'   (a number, a vector of per-unit variances or a covariance matrix).
#' @param obs_var Sigma_0: a positive number, one per data unit, or a
#'   covariance matrix.
#' @param learn What is learned: any of `"weights"` (W_l), `"precisions"`
#'   (Sigma_0 .. Sigma_(L-1)), `"prior"` (mu_L and Sigma_L); `character()`
#'   for inference only.
#' @param q `"laplace"` (Gaussian q: means and covariances) or `"delta"`
#'   (modes only) in the learning rules.
#' @param inference `"newton"` or `"euler"`.
#' @param control [pc_control()].
#' @return An object of class `c("vbpc", "vb_posterior")`: `mean` (per layer,
#'   trials x units posterior modes), `cov` (per layer, units x units x
#'   trials), `cross` (Cov(x_l, x_(l+1)) per trial), `errors` (eps_0 .. eps_L
#'   at the modes, trials x units), `weights`, `Sigma` (Sigma_0 .. Sigma_L),
#'   `prior_mean`, `elbo`, `elbo_trial`, `elbo_terms`, `elbo_trace` (the free
#'   energy over learning), `trajectory` (Euler: `time`, `states`, `errors`
#'   and `interneurons`, arrays time x unit x trial), `obs_var_trace`
#'   (online learning: diag Sigma_0 after each trial), `converged`,
#'   `iterations`, `status`.
#' @references Bogacz R (2017). A tutorial on the free-energy framework for
#'   modelling perception and learning. J. Math. Psych. 76:198-211.
#'   Rao RPN, Ballard DH (1999). Predictive coding in the visual cortex.
#'   Nat. Neurosci. 2:79-87.  Friston K (2005). A theory of cortical responses.
#'   Phil. Trans. R. Soc. B 360:815-836.
#' @seealso [compare_models()], [bms()], [pc_control()].
#' @examples
#' # Bogacz (2017), exercise 2: the most likely food size given light intensity 2
#' fit <- vb_predictive_coding(matrix(2), layers = 1,
#'   activation = list(f = function(v) v^2, df = function(v) 2 * v),
#'   weights = list(matrix(1)), prior_mean = 3, prior_var = 1, obs_var = 1,
#'   learn = character(), inference = "euler", control = pc_control(dt = 0.01, t_max = 5))
#' coef(fit)
#' elbo(fit)
#' @export
vb_predictive_coding <- function(y, layers, activation = "linear", weights = NULL, prior_mean = 0,
                                 prior_var = 1, obs_var = 1, learn = c("weights", "precisions"),
                                 q = c("laplace", "delta"), inference = c("newton", "euler"),
                                 control = pc_control()) {
  cl <- match.call()
  what <- "vb_predictive_coding()"
  fail <- function(...) stop(sprintf(...), call. = FALSE)
  if (is.data.frame(y)) y <- as.matrix(y)
  if (is.numeric(y) && is.null(dim(y))) y <- matrix(y, ncol = 1L)
  if (!is.numeric(y) || !is.matrix(y) || nrow(y) < 1L || ncol(y) < 1L)
    fail("%s: 'y' must be a numeric matrix with one row per trial and one column per unit.", what)
  if (any(!is.finite(y)))
    fail("%s: 'y' contains NA, NaN or infinite values; remove or impute those trials.", what)
  storage.mode(y) <- "double"
  if (!is.numeric(layers) || length(layers) < 1L || any(!is.finite(layers)) ||
      any(layers < 1) || any(layers != round(layers)) || any(layers > 5000))
    fail("%s: 'layers' must give the sizes of the latent layers, whole numbers from 1 to 5000 (e.g. layers = c(5, 2)).", what)
  n <- c(ncol(y), as.integer(layers))
  L <- length(layers)
  if (!is.list(control) || !inherits(control, "pc_control")) {
    if (is.list(control) && (length(control) == 0L || !is.null(names(control))))
      control <- do.call(pc_control, control)
    else fail("%s: 'control' must be pc_control(...) or a named list of its arguments.", what)
  }
  q <- match.arg(q)
  inference <- match.arg(inference)
  if (!is.character(learn) || anyNA(learn) || any(!learn %in% c("weights", "precisions", "prior")))
    fail("%s: 'learn' must be a subset of c(\"weights\", \"precisions\", \"prior\") (character() to learn nothing).", what)
  act <- pc_activation(activation, what)
  # weights
  if (is.null(weights)) {
    if (!"weights" %in% learn)
      fail("%s: 'weights' is NULL but not learned; give a list of %d weight matrices or add \"weights\" to 'learn'.", what, L)
    weights <- lapply(seq_len(L), function(l)
      matrix(stats::rnorm(n[l] * n[l + 1L], sd = 1 / sqrt(n[l + 1L])), n[l], n[l + 1L]))
  }
  if (is.matrix(weights) && L == 1L) weights <- list(weights)
  if (!is.list(weights) || length(weights) != L)
    fail("%s: 'weights' must be a list of %d matrices, one per latent layer.", what, L)
  for (l in seq_len(L)) {
    W <- weights[[l]]
    if (is.numeric(W) && is.null(dim(W)) && length(W) == n[l] * n[l + 1L]) W <- matrix(W, n[l], n[l + 1L])
    if (!is.numeric(W) || !is.matrix(W) || nrow(W) != n[l] || ncol(W) != n[l + 1L])
      fail("%s: 'weights[[%d]]' must be a %d x %d matrix (units of layer %d x units of layer %d); the weights are not conformable with 'y' and 'layers'.",
           what, l, n[l], n[l + 1L], l - 1L, l)
    if (any(!is.finite(W))) fail("%s: 'weights[[%d]]' must be finite.", what, l)
    storage.mode(W) <- "double"
    weights[[l]] <- W
  }
  if (!is.numeric(prior_mean) || !(length(prior_mean) %in% c(1L, n[L + 1L])) || any(!is.finite(prior_mean)))
    fail("%s: 'prior_mean' must be one finite number or %d (one per unit of the top layer).", what, n[L + 1L])
  mu <- rep_len(as.numeric(prior_mean), n[L + 1L])
  if (is.list(prior_var)) {
    if (length(prior_var) != L)
      fail("%s: 'prior_var' as a list must have %d elements, one per latent layer.", what, L)
  } else {
    if (!is.numeric(prior_var) || !(length(prior_var) %in% c(1L, L)))
      fail("%s: 'prior_var' must be a positive number, %d numbers (one per latent layer) or a list of %d variances.",
           what, L, L)
    prior_var <- as.list(rep_len(prior_var, L))
  }
  Sigma <- c(list(pc_cov(obs_var, n[1L], "obs_var", what)),
             lapply(seq_len(L), function(l)
               pc_cov(prior_var[[l]], n[l + 1L], if (L == 1L) "prior_var" else sprintf("prior_var[[%d]]", l), what)))
  traj <- control$trajectory
  if (is.null(traj))
    traj <- inference == "euler" && round(control$t_max / control$dt) * sum(n) * nrow(y) <= 1e6
  model <- list(n = as.integer(n), W = weights, Sigma = Sigma, mu = mu, act = act$code, fn = act$fn,
                learn_w = "weights" %in% learn, learn_prec = "precisions" %in% learn,
                learn_prior = "prior" %in% learn, delta = q == "delta",
                inference = if (inference == "newton") 0L else 1L,
                errors = match(control$errors, c("instant", "dynamic", "interneuron")) - 1L,
                cov = match(control$cov, c("full", "diagonal", "isotropic")) - 1L)
  ctl <- list(maxit = control$maxit, tol = control$tol, quiet = control$quiet, dt = control$dt,
              t_max = control$t_max, inner_maxit = control$inner_maxit,
              inner_tol = control$inner_tol, lr = control$lr, trajectory = isTRUE(traj))
  holder <- list(NULL, NULL)
  t0 <- proc.time()[["elapsed"]]
  r <- .Call(C_pc_fit, y, model, ctl, holder)
  # an error in the user's activation, caught under R_ToplevelExec
  cond <- holder[[1L]]
  if (r$status %in% vb_status_codes[c("bad_input", "interrupted")] && inherits(cond, "condition")) {
    if (inherits(cond, "interrupt")) fail("%s: interrupted by the user.", what)
    fail("%s: %s", what, conditionMessage(cond))
  }
  if (r$status == vb_status_codes[["bad_input"]])
    fail("%s: the activation returned a value the engine cannot use (non-finite, or not 3 values per unit).", what)
  if (r$collapsed > 0L) {
    l <- r$collapsed - 1L
    warning(sprintf("%s: the learned variance Sigma_%d collapsed toward 0 after %d iterations: the delta rule (q = \"delta\") maximises ln p(y, x*) jointly and has no positive fixed point here; use q = \"laplace\", which keeps the posterior variance in the update.",
                    what, l, r$iterations), call. = FALSE)
  } else {
    st <- r$status
    bad_trials <- which(r$trial_status != 0L)
    if (st == 0L && length(bad_trials)) st <- 1L
    if (r$status == 0L && length(bad_trials))
      warning(sprintf("%s: inference did not reach the mode in %d of %d trials (first: trial %d); %s.",
                      what, length(bad_trials), nrow(y), bad_trials[1L],
                      if (inference == "euler") "increase pc_control(t_max) or dt (within stability)"
                      else "increase pc_control(inner_maxit)"), call. = FALSE)
    else if (st == 1L)
      warning(sprintf("%s: learning not converged after %d iterations (the criterion at tol = %g was not met); increase pc_control(maxit).",
                      what, r$iterations, control$tol), call. = FALSE)
    else if (st != 0L) check_status(st, what, r$iterations, control$tol)
    r$status <- st
  }
  lname <- paste0("x", seq_len(L))
  names(r$mean) <- names(r$cov) <- lname
  if (L > 1L) names(r$cross) <- paste0(lname[-L], ",", lname[-1L])
  names(r$errors) <- paste0("eps", 0:L)
  names(r$W) <- paste0("W", seq_len(L))
  names(r$Sigma) <- paste0("Sigma", 0:L)
  traj_out <- NULL
  if (!is.null(r$states)) {
    nst <- dim(r$states)[2L]
    unit_x <- unlist(lapply(seq_len(L), function(l) paste0("x", l, "[", seq_len(n[l + 1L]), "]")))
    unit_e <- unlist(lapply(0:L, function(l) paste0("eps", l, "[", seq_len(n[l + 1L]), "]")))
    perm <- function(a, u) {
      a <- aperm(a, c(2L, 1L, 3L))
      dimnames(a) <- list(NULL, u, NULL)
      a
    }
    traj_out <- list(time = control$dt * seq_len(nst), states = perm(r$states, unit_x),
                     errors = perm(r$error_units, unit_e),
                     interneurons = if (!is.null(r$interneurons))
                       perm(r$interneurons, sub("^eps", "e", unit_e)))
  }
  ll <- r$loglik
  fit <- list(call = cl, y = y, layers = as.integer(layers), activation = act$name,
              activation_fns = act$fns, mean = r$mean, cov = r$cov, cross = r$cross,
              errors = r$errors, weights = r$W, Sigma = r$Sigma, prior_mean = r$mu,
              elbo = r$elbo, elbo_trial = r$elbo_trial,
              elbo_terms = c(elbo = r$elbo, loglik = ll, kl = ll - r$elbo),
              elbo_trace = r$elbo_trace, joint_trace = r$joint_trace, joint = r$joint,
              trajectory = traj_out,
              obs_var_trace = r$obs_var_trace, converged = r$status == 0L,
              iterations = r$iterations, status = r$status, trial_status = r$trial_status,
              inner_iterations = r$inner_iterations, learn = learn, q = q, inference = inference,
              control = control, collapsed = r$collapsed, time = proc.time()[["elapsed"]] - t0)
  class(fit) <- c("vbpc", "vb_posterior")
  fit
}

# The activation: name, C code, the wrapped R closure for C, and the R
# functions (f, df) for the R-side methods.
pc_activation <- function(activation, what) {
  if (is.character(activation) && length(activation) == 1L) {
    a <- match(activation, c("linear", "tanh"))
    if (is.na(a))
      stop(sprintf("%s: 'activation' must be \"linear\", \"tanh\" or list(f =, df =) of R functions.", what),
           call. = FALSE)
    fns <- if (a == 1L) list(f = function(v) v, df = function(v) rep(1, length(v)))
           else list(f = tanh, df = function(v) 1 - tanh(v)^2)
    return(list(name = activation, code = a - 1L, fn = NULL, fns = fns))
  }
  if (!is.list(activation) || !is.function(activation$f) || !is.function(activation$df) ||
      (!is.null(activation$d2f) && !is.function(activation$d2f)))
    stop(sprintf("%s: 'activation' must be \"linear\", \"tanh\" or a list with R functions f and df (and optionally d2f, the second derivative).", what),
         call. = FALSE)
  f <- activation$f; df <- activation$df; d2f <- activation$d2f
  chk <- function(v, x, nm) {
    if (!is.numeric(v) || length(v) != length(x))
      stop(sprintf("activation$%s must return a numeric vector as long as its argument (%d), not %s of length %d.",
                   nm, length(x), class(v)[1L], length(v)), call. = FALSE)
    if (any(!is.finite(v)))
      stop(sprintf("activation$%s returned a non-finite value at x = %s; the activation must be finite where the states go.",
                   nm, format(x[which(!is.finite(v))[1L]], digits = 6)), call. = FALSE)
    as.numeric(v)
  }
  fn <- function(x) tryCatch({
    d2 <- if (is.null(d2f)) {
      h <- 1e-4 * pmax(1, abs(x))
      (chk(df(x + h), x, "df") - chk(df(x - h), x, "df")) / (2 * h)
    } else chk(d2f(x), x, "d2f")
    c(chk(f(x), x, "f"), chk(df(x), x, "df"), d2)
  }, error = function(e) e, interrupt = function(e) e)
  list(name = "user", code = 2L, fn = fn, fns = list(f = f, df = df))
}

# A covariance from a number, a vector of variances or a matrix; a sentence otherwise.
pc_cov <- function(v, k, nm, what) {
  bad <- function(why) stop(sprintf("%s: '%s' %s.", what, nm, why), call. = FALSE)
  if (!is.numeric(v) || any(!is.finite(v))) bad("must be finite positive variances")
  if (is.matrix(v)) {
    if (nrow(v) != k || ncol(v) != k) bad(sprintf("as a matrix must be %d x %d", k, k))
    if (max(abs(v - t(v))) > 1e-10 * max(abs(v))) bad("must be a symmetric covariance matrix")
    if (inherits(try(chol(v), silent = TRUE), "try-error")) bad("must be positive definite")
    S <- v
  } else {
    if (!(length(v) %in% c(1L, k))) bad(sprintf("must be one positive number or %d (one per unit)", k))
    if (any(v <= 0)) bad("must be positive (a variance; use a small positive number for a nearly fixed layer)")
    S <- diag(rep_len(as.numeric(v), k), k)
  }
  storage.mode(S) <- "double"
  S
}

# ---- methods ------------------------------------------------------------------

#' @export
coef.vbpc <- function(object, ...) object[["mean"]]

#' @export
vcov.vbpc <- function(object, ...) object[["cov"]]

#' @export
confint.vbpc <- function(object, parm, level = 0.95, ...) {
  check_level(level)
  z <- stats::qnorm(1 - (1 - level) / 2)
  out <- lapply(names(object$mean), function(l) {
    m <- object$mean[[l]]
    sd <- sqrt(t(apply(object$cov[[l]], 3L, diag)))
    if (ncol(m) == 1L) sd <- matrix(sd, ncol = 1L)
    list(lower = m - z * sd, upper = m + z * sd)
  })
  names(out) <- names(object$mean)
  if (!missing(parm)) out <- out[parm]
  out
}

# one row per trial, layer and unit: the posterior mode, sd and interval
#' @method tidy vbpc
#' @export
tidy.vbpc <- function(x, conf.level = 0.95, ...) {
  check_level(conf.level)
  z <- stats::qnorm(1 - (1 - conf.level) / 2)
  do.call(rbind, lapply(names(x$mean), function(l) {
    m <- x$mean[[l]]
    sd <- matrix(sqrt(apply(x$cov[[l]], 3L, diag)), nrow(m), byrow = ncol(m) > 1L)
    data.frame(trial = rep(seq_len(nrow(m)), ncol(m)),
               term = rep(paste0(l, "[", seq_len(ncol(m)), "]"), each = nrow(m)),
               estimate = as.numeric(m), std.error = as.numeric(sd),
               conf.low = as.numeric(m - z * sd), conf.high = as.numeric(m + z * sd),
               stringsAsFactors = FALSE)
  }))
}

#' @export
nobs.vbpc <- function(object, ...) nrow(object[["y"]])

#' @export
fitted.vbpc <- function(object, ...) pc_topdown_pred(object, object$mean$x1)

#' @export
residuals.vbpc <- function(object, ...) object$y - fitted(object)

# W_1 f(x_1) per trial (rows)
pc_topdown_pred <- function(object, x1) {
  f <- object$activation_fns$f
  fx <- matrix(f(as.numeric(x1)), nrow(x1))
  fx %*% t(object$weights[[1L]])
}

#' Predictions and prediction errors of a predictive-coding network
#'
#' Runs inference (no learning) on `newdata` at the fitted parameters.
#' @param object A fit from [vb_predictive_coding()].
#' @param newdata Trials x units data; the fitted data by default.
#' @param type `"response"`: the prediction W_1 f(x_1*) of each trial's
#'   input; `"errors"`: the prediction errors per layer at the modes;
#'   `"fit"`: the whole fit on `newdata` (a `vbpc` whose [elbo()] is the
#'   free energy of the new trials, e.g. for held-out model comparison).
#' @param ... Unused.
#' @return A matrix, a list of matrices, or a `vbpc` fit.
#' @examples
#' set.seed(1)
#' y <- matrix(rnorm(40), 20) %*% matrix(c(1, 0.5, -0.3, 0.8), 2)
#' fit <- vb_predictive_coding(y, layers = 1, control = pc_control(quiet = TRUE))
#' head(predict(fit, y[1:3, ]))
#' @export
predict.vbpc <- function(object, newdata = NULL, type = c("response", "errors", "fit"), ...) {
  type <- match.arg(type)
  if (is.null(newdata)) newdata <- object$y
  if (is.data.frame(newdata)) newdata <- as.matrix(newdata)
  if (is.numeric(newdata) && is.null(dim(newdata)) && length(newdata) == ncol(object$y))
    newdata <- matrix(newdata, nrow = 1L)
  if (!is.numeric(newdata) || !is.matrix(newdata) || ncol(newdata) != ncol(object$y))
    stop(sprintf("predict(): 'newdata' must be a numeric matrix with %d columns (the units of the fitted data).",
                 ncol(object$y)), call. = FALSE)
  S <- object$Sigma
  ctl <- object$control
  ctl$trajectory <- FALSE
  ctl$quiet <- TRUE
  act <- if (object$activation == "user") object$activation_fns else object$activation
  fit <- vb_predictive_coding(newdata, object$layers, act, weights = object$weights,
                              prior_mean = object$prior_mean, prior_var = S[-1L], obs_var = S[[1L]],
                              learn = character(), q = object$q, inference = object$inference,
                              control = ctl)
  switch(type, fit = fit, errors = fit$errors, response = fitted(fit))
}

#' @export
print.vbpc <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat(sprintf("Predictive coding (variational Laplace): %d trials, layers %s, activation %s\n",
              nrow(x$y), paste(c(ncol(x$y), x$layers), collapse = " <- "), x$activation))
  cat(sprintf("Inference: %s; learning: %s%s\n", x$inference,
              if (length(x$learn)) paste(x$learn, collapse = ", ") else "none",
              if (length(x$learn)) sprintf(" (q = %s%s)", x$q,
                                           if (x$control$lr > 0) sprintf(", online, lr = %g", x$control$lr) else "")
              else ""))
  cat(sprintf("Free energy (Laplace ELBO) %.4f  (accuracy %.4f - complexity %.4f)\n",
              x$elbo, x$elbo_terms[["loglik"]], x$elbo_terms[["kl"]]))
  cat(pc_convergence_line(x), "\n", sep = "")
  invisible(x)
}

# learning's convergence, or inference's when nothing was learned
pc_convergence_line <- function(x) {
  if (length(x$learn)) return(convergence_line(x))
  bad <- sum(x$trial_status != 0L)
  if (bad == 0L) "Inference reached the mode in every trial"
  else sprintf("Inference did NOT reach the mode in %d of %d trials", bad, length(x$trial_status))
}

#' @export
summary.vbpc <- function(object, ...) {
  err_ms <- vapply(object$errors, function(e) mean(e^2), numeric(1))
  sig <- vapply(object$Sigma, function(S) mean(diag(S)), numeric(1))
  structure(list(n = nrow(object$y), sizes = c(ncol(object$y), object$layers),
                 activation = object$activation, inference = object$inference, q = object$q,
                 learn = object$learn, elbo_terms = object$elbo_terms,
                 layers = data.frame(layer = paste0("x", seq_along(sig) - 1L),
                                     units = c(ncol(object$y), object$layers),
                                     mean_var = sig, mean_sq_error = err_ms, row.names = NULL),
                 converged = object$converged, iterations = object$iterations,
                 status = object$status, trial_status = object$trial_status),
            class = "summary.vbpc")
}

#' @export
print.summary.vbpc <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat(sprintf("Predictive coding: %d trials, %d latent layer(s), activation %s, inference %s\n",
              x$n, length(x$sizes) - 1L, x$activation, x$inference))
  cat("\nLayers (mean_var: mean of diag Sigma_l; mean_sq_error: mean squared prediction error):\n")
  print(x$layers, digits = digits, row.names = FALSE)
  e <- x$elbo_terms
  cat(sprintf("\nFree energy = accuracy - complexity = %.4f - %.4f = %.4f\n", e[["loglik"]], e[["kl"]],
              e[["elbo"]]))
  cat("(the Laplace approximation of log p(y); exact for a linear activation)\n")
  cat(pc_convergence_line(x), ".\n", sep = "")
  invisible(x)
}

#' Plot a predictive-coding fit
#'
#' `which = "trajectory"`: the states and error units of one trial over time
#' (Euler inference with the trajectory kept); `which = "elbo"`: the free
#' energy over learning iterations.
#' @param x A fit from [vb_predictive_coding()].
#' @param which `"trajectory"` or `"elbo"`; by default the trajectory when kept.
#' @param trial The trial whose trajectory is drawn.
#' @param ... Passed to [graphics::matplot()] or [graphics::plot()].
#' @return The plotted data, invisibly.
#' @examples
#' fit <- vb_predictive_coding(matrix(2), layers = 1,
#'   activation = list(f = function(v) v^2, df = function(v) 2 * v),
#'   weights = list(matrix(1)), prior_mean = 3, learn = character(), inference = "euler",
#'   control = pc_control(t_max = 5, errors = "dynamic"))
#' plot(fit)
#' @export
plot.vbpc <- function(x, which = NULL, trial = 1L, ...) {
  if (is.null(which)) which <- if (!is.null(x$trajectory)) "trajectory" else "elbo"
  which <- match.arg(which, c("trajectory", "elbo"))
  if (which == "elbo") {
    tr <- x$elbo_trace
    graphics::plot(seq_along(tr) - 1L, tr, type = "b", pch = 20, xlab = "learning iteration",
                   ylab = "free energy", main = "Free energy over learning", ...)
    return(invisible(data.frame(iteration = seq_along(tr) - 1L, elbo = tr)))
  }
  tj <- x$trajectory
  if (is.null(tj))
    stop("plot(): this fit kept no trajectory; fit with inference = \"euler\" and pc_control(trajectory = TRUE).",
         call. = FALSE)
  if (!is.numeric(trial) || length(trial) != 1L || !(trial %in% seq_len(dim(tj$states)[3L])))
    stop(sprintf("plot(): 'trial' must be one of 1 to %d.", dim(tj$states)[3L]), call. = FALSE)
  M <- cbind(tj$states[, , trial], tj$errors[, , trial])
  colnames(M) <- c(dimnames(tj$states)[[2L]], dimnames(tj$errors)[[2L]])
  ns <- dim(tj$states)[2L]
  graphics::matplot(tj$time, M, type = "l", lty = c(rep(1, ns), rep(2, ncol(M) - ns)),
                    col = seq_len(ncol(M)), xlab = "time", ylab = "activity",
                    main = sprintf("States (solid) and error units (dashed), trial %d", trial), ...)
  graphics::legend("topright", legend = colnames(M), lty = c(rep(1, ns), rep(2, ncol(M) - ns)),
                   col = seq_len(ncol(M)), bty = "n", cex = 0.8)
  invisible(data.frame(time = tj$time, M, check.names = FALSE))
}

# ---- q_sample / log_joint: vb_diagnose() and draws() ---------------------------
# theta stacks every trial's latent state: trial 1's x_1, .., x_L, then trial 2's ...
# q per trial is a Gaussian Markov chain over layers, sampled layer by layer.

#' @export
q_sample.vbpc <- function(fit, S) {
  L <- length(fit$layers); N <- nrow(fit$y)
  n <- fit$layers
  out <- vector("list", N)
  logq <- numeric(S)
  for (t in seq_len(N)) {
    blocks <- vector("list", L)
    prev <- NULL
    for (l in seq_len(L)) {
      m <- fit$mean[[l]][t, ]
      C <- fit$cov[[l]][, , t, drop = TRUE]
      C <- matrix(C, n[l], n[l])
      if (l == 1L) {
        mc <- matrix(m, n[l], S)
        Cc <- C
      } else {
        X <- matrix(fit$cross[[l - 1L]][, , t], n[l - 1L], n[l]) # Cov(x_{l-1}, x_l)
        Cp <- matrix(fit$cov[[l - 1L]][, , t], n[l - 1L], n[l - 1L])
        K <- t(solve(Cp, X)) # n_l x n_{l-1}
        mc <- m + K %*% (prev - fit$mean[[l - 1L]][t, ])
        Cc <- C - K %*% X
        Cc <- (Cc + t(Cc)) / 2
      }
      R <- chol_psd(Cc)
      Z <- matrix(stats::rnorm(n[l] * S), n[l], S)
      xl <- mc + crossprod(R, Z)
      logq <- logq - 0.5 * colSums(Z^2) - 0.5 * n[l] * log(2 * pi) - sum(log(diag(R)))
      blocks[[l]] <- xl
      prev <- xl
    }
    out[[t]] <- do.call(rbind, blocks)
  }
  list(theta = do.call(rbind, out), logq = logq)
}

#' @export
log_joint.vbpc <- function(fit, theta) {
  L <- length(fit$layers); N <- nrow(fit$y)
  n <- c(ncol(fit$y), fit$layers)
  f <- fit$activation_fns$f
  S <- ncol(theta)
  dens <- function(r, Sig) { # r: k x S residuals
    R <- chol(Sig)
    z <- backsolve(R, r, transpose = TRUE)
    -0.5 * colSums(z^2) - 0.5 * nrow(r) * log(2 * pi) - sum(log(diag(R)))
  }
  lp <- numeric(S)
  per <- sum(fit$layers)
  off <- cumsum(c(0, fit$layers))
  for (t in seq_len(N)) {
    x <- theta[(t - 1L) * per + seq_len(per), , drop = FALSE]
    xl <- lapply(seq_len(L), function(l) x[off[l] + seq_len(n[l + 1L]), , drop = FALSE])
    below <- matrix(fit$y[t, ], n[1L], S)
    for (l in seq_len(L)) {
      fx <- matrix(f(as.numeric(xl[[l]])), n[l + 1L], S)
      lp <- lp + dens(below - fit$weights[[l]] %*% fx, fit$Sigma[[l]])
      below <- xl[[l]]
    }
    lp <- lp + dens(below - fit$prior_mean, fit$Sigma[[L + 1L]])
  }
  lp
}
