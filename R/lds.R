#' Latent linear dynamical systems by variational inference
#'
#' Fits the state-space model
#' \deqn{z_1 \sim N(m_0, V_0),\quad z_t = A z_{t-1} + w_t,\ w_t \sim N(0, Q)}
#' with either Gaussian observations \eqn{y_t = C z_t + d + e_t},
#' \eqn{e_t \sim N(0, \mathrm{diag}(R))}, or Poisson spike counts
#' \eqn{y_{ti} \sim \mathrm{Poisson}(\Delta_t \exp(c_i^\top z_t + d_i))},
#' to one or several trials that share the parameters.
#'
#' The posterior over each latent path is approximated by a Gaussian q:
#' * `approx = "structured"`: q(z_1, ..., z_T) with a block-tridiagonal
#'   precision, computed by an information-form Kalman filter and RTS smoother
#'   in C, O(T (N d^2 + d^3)) per pass. For Gaussian observations it is the
#'   exact posterior and the ELBO equals the log-likelihood log p(y). For
#'   Poisson observations it is the optimal Gaussian (the Gaussian variational
#'   approximation), found by fixed-point natural-gradient steps with
#'   E exp(c'z) = exp(c'm + c'Sc/2) in closed form and step halving, so the
#'   ELBO never decreases.
#' * `approx = "block"`: q = prod_k q(z_{B_k}) over a partition of the time
#'   steps into contiguous runs B_k (`blocks`), each run a Gaussian Markov
#'   chain (block-tridiagonal precision), runs independent: between
#'   meanfield (runs of length 1) and structured (one run). Each run's update
#'   is an exact coordinate update for gaussian observations (a
#'   block-tridiagonal solve given the neighbouring runs' means) and a damped
#'   natural-gradient step for poisson ones, so the ELBO never decreases; a
#'   finer partition never has a higher optimal ELBO.
#' * `approx = "meanfield"`: q = prod_t q(z_t). It ignores the temporal
#'   dependence of the posterior: a lower ELBO and credible bands that are too
#'   narrow. Each iteration moves all the factors at once: the means by a
#'   Newton step on the ELBO given the variances (its Hessian is block
#'   tridiagonal, so the step is one smoother pass, O(T d^3)) and each
#'   factor's precision by its natural-gradient fixed-point step, with one
#'   step-halving search on the whole ELBO, so the ELBO never decreases and
#'   a few iterations suffice where coordinate ascent over time steps needs
#'   hundreds. `control = vb_control(joint_means = 0)` gives plain coordinate
#'   ascent instead (one damped update of each q(z_t) in turn per sweep).
#'
#' With `learn = TRUE` the parameters are fitted by variational EM: the E-step
#' improves q, the M-step maximises the ELBO over the parameters (closed form
#' for A, Q, m0, V0 and, for Gaussian observations, C, d, R; Newton steps for
#' C, d under Poisson). Every step increases the ELBO, so the trace is
#' monotone and the final ELBO is a lower bound on log p(y) under the fitted
#' parameters. The latent space is identified only up to an invertible linear
#' map (and V0 collapses towards the smoothed covariance of z_1 with a single
#' trial), so compare subspaces or predicted rates, not raw matrices.
#'
#' While `R` is learned each noise variance is kept at or above `1e-8` times
#' the sample variance of its unit (the same floor for the starting values and
#' every M-step, so the EM trace cannot decrease). A unit whose variance
#' reaches the floor is fitted exactly by the latent state, the likelihood is
#' then degenerate, and a warning says so. Learning as many parameters as
#' there are observed values (e.g. one or two bins with `learn = TRUE`) is
#' refused, since the bound then grows without limit; a constant unit cannot
#' have its `R` learned. `converged` is `TRUE` only when the relative ELBO
#' change met `tol` with a finite, non-decreasing trace; otherwise `status`
#' gives the reason and a warning names it, whatever `quiet` says.
#'
#' Missing bins (`NA` in `y`) are allowed: they contribute nothing to the
#' likelihood and their latent states are inferred from the dynamics.
#'
#' @param y A numeric T x N matrix (time bins by units) or a list of such
#'   matrices, one per trial, with the same N columns.
#' @param latent_dim The latent dimension d, a whole number with 1 <= d < N.
#' @param family `gaussian()` or `poisson()` (log link).
#' @param approx `"structured"` (default), `"block"` or `"meanfield"`, see Details.
#' @param blocks For `approx = "block"`: a run length L (runs of L time steps,
#'   the last possibly shorter), or a list of contiguous time-step vectors
#'   partitioning `1:T`, e.g. `list(1:2, 3, 4, 5)` for q(z_1, z_2) q(z_3) q(z_4) q(z_5).
#' @param params Parameters: a list with `A` (d x d), `Q` (d x d, positive
#'   definite), `C` (N x d), `d` (length N), `R` (length N, positive; gaussian
#'   only), `m0` (length d) and `V0` (d x d, positive definite). With
#'   `learn = FALSE` they are held fixed (all are required); with learning they
#'   are starting values (missing ones are initialised from the data).
#' @param learn `TRUE` (learn all parameters), `FALSE` (hold all fixed) or a
#'   character vector naming those to learn, from `"A"`, `"Q"`, `"C"`, `"d"`,
#'   `"R"`, `"m0"`, `"V0"` (`"C"` and `"d"` go together).
#' @param exposure Poisson only: bin width (or exposure) \eqn{\Delta}: a
#'   positive number, a vector with one value per bin (one trial) or a list
#'   of such vectors (one per trial). Default 1.
#' @param control [vb_control()] or a named list of its arguments: `maxit` EM
#'   iterations (and fixed-point iterations when `learn = FALSE`), `tol` on
#'   the relative ELBO change, `quiet` (progress lines only), `joint_means`
#'   (meanfield: `0` for plain coordinate sweeps, any other value for the
#'   joint steps).
#' @return An object of class `c("vblds", "vb_posterior")`: `params`, `elbo`,
#'   `elbo_trace` (after each EM iteration; with `learn = FALSE` and
#'   `approx = "meanfield"` after each meanfield iteration),
#'   `elbo_terms` (elbo, expected log-likelihood, the rest),
#'   `converged`, `status` (the engine status code, 0 when converged),
#'   `iterations` (EM iterations; with `learn = FALSE` fixed-point iterations
#'   or meanfield iterations), `passes` (smoother passes, plus sweeps for the
#'   meanfield, in all),
#'   `posterior` (per trial: `mean` T x d, `cov` d x d x T,
#'   `cross` with `cross[, , t]` = Cov(z_t, z_{t-1}), and for the structured
#'   q its precision blocks `D` and `L`), `fitted.values`, `family`, `approx`,
#'   `latent_dim`, `y` (the list of trials), `exposure`, `var_floor`, `time`,
#'   `call`.
#' @seealso [predict.vblds()], [plot.vblds()], [simulate.vblds()].
#' @examples
#' set.seed(1)
#' z <- as.numeric(arima.sim(list(ar = 0.95), 200))
#' y <- outer(z, c(1, -0.5, 0.8)) + matrix(rnorm(600, sd = 0.5), 200)
#' fit <- vb_lds(y, latent_dim = 1, control = vb_control(maxit = 50, quiet = TRUE))
#' fit
#' elbo(fit)
#' @export
vb_lds <- function(y, latent_dim, family = gaussian(), approx = c("structured", "block", "meanfield"),
                   params = NULL, learn = TRUE, exposure = NULL, control = vb_control(), blocks = NULL) {
  t0 <- proc.time()[["elapsed"]]
  cl <- match.call()
  approx <- match.arg(approx)
  control <- as_vb_control(control)
  family <- lds_family(family)
  pois <- family$family == "poisson"
  single <- !is.list(y) || is.data.frame(y)
  Y <- lds_check_y(y, pois)
  N <- ncol(Y[[1L]])
  if (!is.numeric(latent_dim) || length(latent_dim) != 1L || !is.finite(latent_dim) ||
      latent_dim != round(latent_dim) || latent_dim < 1)
    stop("vb_lds(): 'latent_dim' must be a single whole number >= 1.", call. = FALSE)
  latent_dim <- as.integer(latent_dim)
  if (latent_dim >= N)
    stop(sprintf("vb_lds(): 'latent_dim' (%d) must be smaller than the number of units N = %d; use fewer latent dimensions.",
                 latent_dim, N), call. = FALSE)
  Off <- lds_check_exposure(exposure, Y, pois)
  starts <- lds_block_starts(approx, blocks, vapply(Y, nrow, 1L))
  learn <- lds_check_learn(learn, params)
  if (pois) learn <- setdiff(learn, "R")
  fixed <- setdiff(setdiff(lds_par_names, if (pois) "R"), learn)
  if (length(miss <- setdiff(fixed, names(params))))
    stop(sprintf("vb_lds(): parameters that are not learned must be given; 'params' lacks %s.",
                 paste(miss, collapse = ", ")), call. = FALSE)
  lds_check_enough_data(Y, learn, latent_dim, pois)
  floor <- lds_floor(Y, learn, pois)
  params <- if (length(setdiff(c("A", "Q", "C", "d", "m0", "V0", if (!pois) "R"), names(params))) == 0L &&
                !is.null(params)) params else lds_init(Y, Off, latent_dim, pois, params, floor)
  params <- lds_check_params(params, N, latent_dim, pois)
  if ("R" %in% learn) params$R <- pmax(params$R, floor)

  fit <- lds_em(Y, Off, params, pois, approx, learn, control, floor, starts)
  fit$blocks <- starts
  fit$block_spec <- blocks
  fit$time <- proc.time()[["elapsed"]] - t0
  fit$call <- cl
  fit$family <- family
  fit$approx <- approx
  fit$latent_dim <- latent_dim
  fit$learn <- learn
  fit$y <- Y
  fit$exposure <- lapply(Off, exp)
  fit$single <- single
  fit$control <- control
  fit$var_floor <- floor
  class(fit) <- c("vblds", "vb_posterior")
  fit$fitted.values <- lds_rates(fit, type = "response")
  if (single) fit$fitted.values <- fit$fitted.values[[1L]]
  check_status(fit$status, "vb_lds()", fit$iterations, control$tol)
  if ("R" %in% learn && any(at <- fit$params$R <= floor * (1 + 1e-6)))
    warning(sprintf("vb_lds(): the fit is degenerate: the noise variance of unit%s %s reached its floor (%g times the unit's variance), where the likelihood grows as the variance shrinks, so the ELBO is set by the floor and is no meaningful evidence bound; use fewer latent dimensions, more bins or trials, or hold R fixed.",
                    if (sum(at) > 1) "s" else "", paste(utils::head(which(at), 5L), collapse = ", "),
                    lds_var_floor), call. = FALSE)
  fit
}

# ---- input checks -------------------------------------------------------------

lds_family <- function(family) {
  if (is.character(family)) family <- get(family, mode = "function", envir = parent.frame(2))
  if (is.function(family)) family <- family()
  if (!inherits(family, "family") ||
      !(identical(family$family, "gaussian") && family$link == "identity") &&
      !(identical(family$family, "poisson") && family$link == "log"))
    stop("vb_lds(): 'family' must be gaussian() (identity link) or poisson() (log link).", call. = FALSE)
  family
}

lds_check_y <- function(y, pois) {
  if (!is.list(y) || is.data.frame(y)) y <- list(y)
  if (length(y) == 0L) stop("vb_lds(): 'y' is an empty list; give at least one trial.", call. = FALSE)
  Y <- lapply(seq_along(y), function(k) {
    yk <- y[[k]]
    if (is.data.frame(yk)) yk <- as.matrix(yk)
    if (is.null(dim(yk)) && is.numeric(yk)) yk <- matrix(yk, ncol = 1L)
    if (!is.matrix(yk) || !(is.numeric(yk) || all(is.na(yk))))
      stop(sprintf("vb_lds(): trial %d of 'y' is not a numeric matrix (time bins x units).", k), call. = FALSE)
    storage.mode(yk) <- "double"
    if (nrow(yk) < 1L) stop(sprintf("vb_lds(): trial %d of 'y' has no time bins.", k), call. = FALSE)
    if (!all(is.finite(yk)) && any(is.infinite(yk) | is.nan(yk)))
      stop(sprintf("vb_lds(): trial %d of 'y' contains infinite or NaN values; use NA for missing bins.", k), call. = FALSE)
    if (pois && !isTRUE(all(yk >= 0 & yk == round(yk), na.rm = TRUE))) {
      bad <- yk[!is.na(yk) & (yk < 0 | yk != round(yk))][1L]
      stop(sprintf("vb_lds(): poisson counts must be whole numbers >= 0, but trial %d of 'y' has e.g. %g.",
                   k, bad), call. = FALSE)
    }
    yk
  })
  N <- vapply(Y, ncol, 1L)
  if (any(N != N[1L]))
    stop(sprintf("vb_lds(): every trial of 'y' must have the same number of units (columns); found %s.",
                 paste(unique(N), collapse = ", ")), call. = FALSE)
  allna <- Reduce(`+`, lapply(Y, function(yk) if (anyNA(yk)) colSums(!is.na(yk)) else rep(nrow(yk), ncol(yk)))) == 0
  if (any(allna))
    stop(sprintf("vb_lds(): unit %d of 'y' has no observed bins; drop it.", which(allna)[1L]), call. = FALSE)
  Y
}

lds_check_exposure <- function(exposure, Y, pois) {
  Tk <- vapply(Y, nrow, 1L)
  if (is.null(exposure)) return(lapply(Tk, function(T) rep(0, T)))
  if (!pois) stop("vb_lds(): 'exposure' applies to poisson() only; leave it NULL for gaussian().", call. = FALSE)
  if (!is.list(exposure)) {
    if (length(exposure) == 1L) exposure <- rep(list(exposure), length(Y))
    else if (length(Y) == 1L) exposure <- list(exposure)
    else stop("vb_lds(): with several trials 'exposure' must be one number or a list with one vector per trial.", call. = FALSE)
  }
  if (length(exposure) != length(Y))
    stop(sprintf("vb_lds(): 'exposure' has %d elements but 'y' has %d trials.", length(exposure), length(Y)), call. = FALSE)
  lapply(seq_along(Y), function(k) {
    e <- exposure[[k]]
    if (!is.numeric(e) || !(length(e) %in% c(1L, Tk[k])) || any(!is.finite(e) | e <= 0))
      stop(sprintf("vb_lds(): 'exposure' for trial %d must be positive numbers, one or one per time bin (%d).",
                   k, Tk[k]), call. = FALSE)
    log(rep_len(as.double(e), Tk[k]))
  })
}

lds_par_names <- c("A", "Q", "C", "d", "R", "m0", "V0")

lds_check_learn <- function(learn, params) {
  if (is.logical(learn) && length(learn) == 1L && !is.na(learn)) {
    if (!learn && is.null(params))
      stop("vb_lds(): learn = FALSE needs 'params' (a list with A, Q, C, d, R, m0, V0).", call. = FALSE)
    return(if (learn) lds_par_names else character(0))
  }
  if (!is.character(learn) || !all(learn %in% lds_par_names))
    stop("vb_lds(): 'learn' must be TRUE, FALSE or names from A, Q, C, d, R, m0, V0.", call. = FALSE)
  if (xor("C" %in% learn, "d" %in% learn))
    stop("vb_lds(): 'C' and 'd' are learned together; name both in 'learn' or neither.", call. = FALSE)
  if (length(learn) < length(lds_par_names) && is.null(params))
    stop("vb_lds(): parameters not learned must be given in 'params'.", call. = FALSE)
  unique(learn)
}

lds_check_params <- function(params, N, k, pois) {
  if (!is.list(params)) stop("vb_lds(): 'params' must be a list.", call. = FALSE)
  need <- c("A", "Q", "C", "d", "m0", "V0", if (!pois) "R")
  miss <- setdiff(need, names(params))
  if (length(miss))
    stop(sprintf("vb_lds(): 'params' lacks %s.", paste(miss, collapse = ", ")), call. = FALSE)
  mat <- function(x, nm, r, c) {
    if (length(x) == 1L && r == 1L && c == 1L) x <- matrix(x, 1L, 1L)
    if (!is.numeric(x) || !is.matrix(x) || nrow(x) != r || ncol(x) != c || any(!is.finite(x)))
      stop(sprintf("vb_lds(): params$%s must be a finite %d x %d matrix (N = %d units, latent_dim = %d).",
                   nm, r, c, N, k), call. = FALSE)
    storage.mode(x) <- "double"
    x
  }
  vec <- function(x, nm, n) {
    if (!is.numeric(x) || length(x) != n || any(!is.finite(x)))
      stop(sprintf("vb_lds(): params$%s must be a finite vector of length %d.", nm, n), call. = FALSE)
    as.double(x)
  }
  pd <- function(x, nm) {
    if (max(abs(x - t(x))) > 1e-8 * max(1, abs(x)))
      stop(sprintf("vb_lds(): params$%s must be symmetric.", nm), call. = FALSE)
    x <- (x + t(x)) / 2
    ev <- eigen(x, symmetric = TRUE, only.values = TRUE)$values
    if (min(ev) <= 1e-12 * max(1, max(ev)))
      stop(sprintf("vb_lds(): params$%s must be positive definite (smallest eigenvalue %.3g).",
                   nm, min(ev)), call. = FALSE)
    x
  }
  out <- list(A = mat(params$A, "A", k, k), Q = pd(mat(params$Q, "Q", k, k), "Q"),
              C = mat(params$C, "C", N, k), d = vec(params$d, "d", N),
              R = if (pois) rep(1, N) else vec(params$R, "R", N),
              m0 = vec(params$m0, "m0", k), V0 = pd(mat(params$V0, "V0", k, k), "V0"))
  if (!pois && any(out$R <= 0))
    stop("vb_lds(): params$R (the observation noise variances) must be positive.", call. = FALSE)
  out
}

# Starting values: factor-analysis-like loadings from the leading principal
# components; slow, stable dynamics with unit stationary variance.
lds_init <- function(Y, Off, k, pois, given = NULL, floor = 0) {
  Yall <- do.call(rbind, Y)
  if (pois) {
    off <- unlist(Off)
    rate <- colSums(Yall, na.rm = TRUE) / colSums(exp(off) * !is.na(Yall))
    Z <- log((Yall + 0.5) / exp(off))
  } else Z <- Yall
  mu <- colMeans(Z, na.rm = TRUE)
  Zc <- sweep(Z, 2L, mu)
  Zc[is.na(Zc)] <- 0
  S <- crossprod(Zc) / max(1, nrow(Zc) - 1)
  e <- eigen(S, symmetric = TRUE)
  noise <- mean(e$values[-(1:k)])
  C <- e$vectors[, 1:k, drop = FALSE] %*% diag(sqrt(pmax(e$values[1:k] - noise, 1e-3 * max(noise, 1e-8))), k)
  if (pois) C <- C * 0.5
  R <- pmax(diag(S) - rowSums(C^2), 1e-3 * diag(S), floor, 1e-8 * max(diag(S), 1e-300))
  d <- if (pois) log(pmax(rate, 1e-8)) - 0.5 * rowSums(C^2) else mu
  p <- list(A = diag(0.9, k), Q = diag(1 - 0.81, k), C = C, d = d, R = R,
            m0 = rep(0, k), V0 = diag(1, k))
  for (nm in names(given)) if (nm %in% lds_par_names) p[[nm]] <- given[[nm]]
  p
}

# ---- variational EM ------------------------------------------------------------

# The variance floor: while R is learned, each noise variance R_i is kept at
# or above lds_var_floor times the sample variance of unit i.  The starting
# values obey the same floor as the M-step, so every M-step is the exact
# constrained maximum and the EM trace cannot decrease.
lds_var_floor <- 1e-8
# A decrease of the ELBO beyond lds_elbo_slack (1 + |ELBO|) is not rounding:
# the EM stops with status "decreased" (the same constant as LDS_ELBO_SLACK in
# src/lds.h).
lds_elbo_slack <- 1e-10

lds_floor <- function(Y, learn, pois) {
  N <- ncol(Y[[1L]])
  if (pois || !"R" %in% learn) return(rep(0, N))
  Yall <- do.call(rbind, Y)
  vapply(seq_len(N), function(i) {
    yi <- Yall[!is.na(Yall[, i]), i]
    v <- if (length(yi) > 1L) stats::var(yi) else 0
    if (!(v > 0))
      stop(sprintf("vb_lds(): unit %d of 'y' is constant (or observed once), so its noise variance R cannot be learned (the likelihood has no maximum); drop the unit or give R in 'params' and leave it out of 'learn'.",
                   i), call. = FALSE)
    lds_var_floor * v
  }, 0)
}

# Learning more parameters than there are observed values gives a degenerate
# maximum (with T = 1 or 2 bins the noise and state variances collapse and
# the bound grows without limit): refuse it.
lds_check_enough_data <- function(Y, learn, k, pois) {
  if (!length(learn)) return(invisible())
  N <- ncol(Y[[1L]])
  nobs <- sum(vapply(Y, function(y) sum(!is.na(y)), 0))
  npar <- c(C = N * k, d = N, R = if (pois) 0 else N, A = k * k, Q = k * (k + 1) / 2, m0 = k,
            V0 = k * (k + 1) / 2)[learn]
  if (sum(npar) >= nobs)
    stop(sprintf("vb_lds(): too few observations to learn the parameters: %d observed values for %d learned parameters (%s); the maximised bound is degenerate (variances collapse and the ELBO grows without limit). Give more time bins or trials, use fewer latent dimensions, or hold parameters fixed with 'learn'.",
                 as.integer(nobs), as.integer(sum(npar)), paste(learn, collapse = ", ")), call. = FALSE)
  invisible()
}

lds_estep <- function(Y, Off, params, pois, approx, state, control) {
  fam <- family_code(if (pois) stats::poisson() else stats::gaussian())
  code <- match(approx, c("structured", "meanfield", "block")) - 1L
  lapply(seq_along(Y), function(k) .Call(C_lds_estep, Y[[k]], Off[[k]], fam, params, state[[k]], code, control))
}

# The runs of the block family, per trial, as 0-based starts: `blocks` is a
# run length L (runs of L steps, the last possibly shorter) or a list of
# contiguous index vectors partitioning 1:T (every trial the same T).
lds_block_starts <- function(approx, blocks, Ts) {
  if (approx != "block") {
    if (!is.null(blocks)) stop("vb_lds(): 'blocks' is for approx = \"block\".", call. = FALSE)
    return(NULL)
  }
  if (is.null(blocks)) stop("vb_lds(): approx = \"block\" needs 'blocks': a run length, or a list of contiguous time steps such as list(1:2, 3, 4).",
                            call. = FALSE)
  if (is.list(blocks)) {
    if (length(unique(Ts)) != 1L)
      stop("vb_lds(): a list of 'blocks' needs trials of equal length; give a run length instead.", call. = FALSE)
    T <- Ts[1L]
    ok <- vapply(blocks, function(b) is.numeric(b) && length(b) > 0L && !anyNA(b) && all(b == round(b)) &&
                   all(diff(b) == 1), logical(1))
    all <- unlist(blocks)
    if (!all(ok) || !identical(as.numeric(all), as.numeric(seq_len(T))))
      stop(sprintf("vb_lds(): 'blocks' must partition the time steps 1:%d into contiguous runs, in order (e.g. list(1:2, 3, 4, ...)).", T),
           call. = FALSE)
    s <- as.integer(vapply(blocks, min, 0) - 1)
    return(rep(list(s), length(Ts)))
  }
  if (!is.numeric(blocks) || length(blocks) != 1L || !is.finite(blocks) || blocks < 1 || blocks != round(blocks))
    stop("vb_lds(): 'blocks' must be a whole run length >= 1 or a list of contiguous time steps.", call. = FALSE)
  lapply(Ts, function(T) as.integer(seq(0, T - 1, by = min(blocks, T))))
}

lds_em <- function(Y, Off, params, pois, approx, learn, control, floor, starts = NULL) {
  K <- length(Y)
  codes <- vb_status_codes
  state <- if (approx == "block") lapply(starts, function(s) list(starts = s)) else vector("list", K)
  trace <- numeric(0)
  t0 <- proc.time()[["elapsed"]]; last <- t0
  # with learning, a few fixed-point iterations per E-step (one is exact for gaussian)
  inner <- control
  if (length(learn)) inner$maxit <- if (pois) 3L else 1L
  outer <- if (length(learn)) control$maxit else 1L
  status <- codes[["maxit"]]
  passes <- 0L
  E <- NULL; pE <- params
  for (it in seq_len(outer)) {
    En <- lds_estep(Y, Off, params, pois, approx, state, inner)
    st <- vapply(En, `[[`, 0L, "status")
    el <- sum(vapply(En, `[[`, 0, "elbo"))
    passes <- passes + sum(vapply(En, `[[`, 0L, "passes"))
    failed <- st[!st %in% codes[c("ok", "maxit")]]
    if (!is.finite(el)) {
      # no usable q at these parameters (e.g. the M-step left Q singular): keep the last one
      status <- if (length(failed)) failed[1L] else codes[["nonfinite"]]
      if (!is.null(E)) params <- pE else E <- En
      break
    }
    E <- En; pE <- params
    trace <- c(trace, el)
    state <- lapply(seq_along(E), function(k) {
      e <- E[[k]]
      switch(approx, structured = e[c("D", "L", "b")], meanfield = e[c("m", "S")],
             block = list(starts = starts[[k]], D = e$D, Ls = e$L, b = e$b))
    })
    if (length(failed)) {
      status <- failed[1L]
      break
    }
    if (it > 1L && el < trace[it - 1L] - lds_elbo_slack * (1 + abs(trace[it - 1L]))) {
      status <- codes[["decreased"]]
      break
    }
    if (!length(learn)) {
      status <- if (all(st == codes[["ok"]])) codes[["ok"]] else codes[["maxit"]]
      break
    }
    if (it > 1L && tol_met(trace[it - 1L], el, control$tol) && all(st == codes[["ok"]])) {
      status <- codes[["ok"]]
      break
    }
    if (it == outer) break
    now <- proc.time()[["elapsed"]]
    if (!control$quiet && now - t0 > 1 && now - last > 1) {
      message(sprintf("vb_lds(): iteration %d, ELBO %.6f", it, el))
      last <- now
    }
    Mn <- lds_mstep(Y, Off, E, params, pois, learn, control, floor)
    if (Mn$status != codes[["ok"]]) {
      status <- Mn$status
      break
    }
    params <- Mn$params
  }
  el <- sum(vapply(E, `[[`, 0, "elbo"))
  loglik <- sum(vapply(E, `[[`, 0, "loglik"))
  if (!length(learn) && approx == "meanfield") trace <- lds_inner_trace(E, el)
  post <- lapply(E, function(e) {
    po <- list(mean = t(e$m), cov = e$S, cross = e$Sc, logdet = e$logdet)
    if (approx != "meanfield") c(po, list(D = e$D, L = e$L)) else po
  })
  status <- as.integer(status)
  list(params = params, elbo = el, elbo_trace = trace,
       elbo_terms = c(elbo = el, loglik = loglik, kl = loglik - el),
       converged = status == codes[["ok"]], status = status,
       iterations = if (length(learn)) length(trace) else max(vapply(E, `[[`, 0L, "iterations")),
       passes = passes, posterior = post)
}

# With learn = FALSE the one E-step's ELBO after each of its iterations
# (meanfield), summed over trials (a trial that stopped early keeps its last
# value); the single final ELBO when a trial has no trace or it does not end
# at that trial's final ELBO (a failed step).
lds_inner_trace <- function(E, el) {
  tr <- lapply(E, `[[`, "trace")
  ok <- vapply(seq_along(E), function(k) length(tr[[k]]) > 0L &&
                 identical(tr[[k]][length(tr[[k]])], E[[k]]$elbo), TRUE)
  if (!all(ok)) return(el)
  n <- max(lengths(tr))
  Reduce(`+`, lapply(tr, function(x) c(x, rep(x[length(x)], n - length(x)))))
}

# The M-step: closed forms (A, Q, m0, V0; gaussian C, d, R with R_i >= floor_i)
# and the Poisson Newton steps in C.  Returns list(params, status).
lds_mstep <- function(Y, Off, E, p, pois, learn, control, floor) {
  k <- nrow(p$A)
  K <- length(E)
  sym <- function(x) (x + t(x)) / 2
  # dynamics: sufficient statistics over t >= 2
  S11 <- S10 <- S00 <- matrix(0, k, k); n1 <- 0
  for (e in E) {
    T <- ncol(e$m)
    if (T < 2) next
    m <- e$m
    a <- m[, -T, drop = FALSE]; b <- m[, -1L, drop = FALSE]
    S11 <- S11 + rowSums(e$S[, , -T, drop = FALSE], dims = 2) + tcrossprod(a)
    S00 <- S00 + rowSums(e$S[, , -1L, drop = FALSE], dims = 2) + tcrossprod(b)
    S10 <- S10 + rowSums(e$Sc[, , -1L, drop = FALSE], dims = 2) + tcrossprod(b, a)
    n1 <- n1 + T - 1
  }
  if (n1 > 0) {
    if ("A" %in% learn) {
      S11i <- tryCatch(solve(S11), error = function(e) NULL)
      if (is.null(S11i)) return(list(params = p, status = vb_status_codes[["not_pd"]]))
      p$A <- S10 %*% S11i
    }
    if ("Q" %in% learn) {
      A <- p$A
      p$Q <- sym(S00 - A %*% t(S10) - S10 %*% t(A) + A %*% S11 %*% t(A)) / n1
    }
  }
  m1 <- vapply(E, function(e) e$m[, 1L], numeric(k))
  m1 <- matrix(m1, k)
  if ("m0" %in% learn) p$m0 <- rowMeans(m1)
  if ("V0" %in% learn) {
    V <- matrix(0, k, k)
    for (j in seq_len(K)) {
      dv <- m1[, j] - p$m0
      V <- V + E[[j]]$S[, , 1L] + tcrossprod(dv)
    }
    p$V0 <- sym(V / K)
  }
  if ("C" %in% learn) {
    Yall <- do.call(rbind, Y)
    M <- do.call(cbind, lapply(E, `[[`, "m"))
    Sall <- do.call(c, lapply(E, function(e) as.vector(e$S)))
    dim(Sall) <- c(k, k, ncol(M))
    if (pois) {
      r <- .Call(C_lds_poisson_mstep, Yall, unlist(Off), M, Sall, p$C, p$d,
                 list(maxit = lds_newton_steps, tol = control$tol))
      p$C <- r$C; p$d <- r$d
      if (r$status != vb_status_codes[["ok"]]) return(list(params = p, status = r$status))
    } else {
      O <- !is.na(Yall)
      Y0 <- Yall; Y0[!O] <- 0
      Tt <- ncol(M); q <- k + 1L
      # per-time vec(E[x x']) with x = (z, 1)
      Ex <- array(0, c(q, q, Tt))
      Ex[1:k, 1:k, ] <- Sall
      for (a in 1:k) for (b in 1:k) Ex[a, b, ] <- Ex[a, b, ] + M[a, ] * M[b, ]
      Ex[1:k, q, ] <- M; Ex[q, 1:k, ] <- M; Ex[q, q, ] <- 1
      Xt <- rbind(M, 1)
      allobs <- all(O)
      G <- if (allobs) matrix(rowSums(matrix(Ex, q * q)), q) else NULL
      Gi <- if (!allobs) matrix(Ex, q * q) %*% O else NULL   # q^2 x N
      Rxy <- Xt %*% Y0                                         # q x N
      ysq <- colSums(Y0^2)
      nobs <- colSums(O)
      N <- ncol(Yall)
      for (i in seq_len(N)) {
        Gm <- if (allobs) G else matrix(Gi[, i], q)
        th <- tryCatch(solve(Gm, Rxy[, i]), error = function(e) NULL)
        if (is.null(th)) return(list(params = p, status = vb_status_codes[["not_pd"]]))
        p$C[i, ] <- th[1:k]; p$d[i] <- th[q]
        if ("R" %in% learn) p$R[i] <- max((ysq[i] - 2 * sum(th * Rxy[, i]) + sum(th * (Gm %*% th))) / nobs[i],
                                          floor[i])
      }
      learn <- setdiff(learn, "R")
    }
  }
  if (!pois && "R" %in% learn) {
    for (i in seq_len(ncol(Y[[1L]]))) {
      num <- 0; n <- 0
      for (j in seq_len(K)) {
        o <- !is.na(Y[[j]][, i]); m <- E[[j]]$m
        res <- Y[[j]][o, i] - drop(p$C[i, , drop = FALSE] %*% m[, o, drop = FALSE]) - p$d[i]
        Si <- matrix(E[[j]]$S, k * k)[, o, drop = FALSE]
        num <- num + sum(res^2) + sum(crossprod(as.vector(tcrossprod(p$C[i, ])), Si))
        n <- n + sum(o)
      }
      p$R[i] <- max(num / n, floor[i])
    }
  }
  list(params = p, status = vb_status_codes[["ok"]])
}

# Newton steps per unit in each Poisson M-step (generalised EM: each step
# increases the ELBO, the M-step need not converge).
lds_newton_steps <- 2L

# Smoothed rates (response) or linear predictor (link) per trial, with the
# variance of the linear predictor attached for the response of poisson.
lds_rates <- function(object, type = c("response", "link")) {
  type <- match.arg(type)
  p <- object$params
  pois <- object$family$family == "poisson"
  lapply(seq_along(object$posterior), function(k) {
    po <- object$posterior[[k]]
    eta <- tcrossprod(po$mean, p$C) + rep(p$d, each = nrow(po$mean))
    if (type == "link") return(eta)
    if (!pois) return(eta)
    exp(eta + 0.5 * lds_eta_var(po$cov, p$C)) * object$exposure[[k]]
  })
}

# Var(c_i'z_t) = c_i' S_t c_i for all t and i by one matrix product: T x N.
lds_eta_var <- function(S, C) {
  k <- ncol(C)
  W <- vapply(seq_len(nrow(C)), function(i) as.vector(tcrossprod(C[i, ])), numeric(k * k))
  crossprod(matrix(S, k * k), matrix(W, k * k))
}

# Posterior standard deviations of z_t: T x d.
lds_latent_sd <- function(S) {
  k <- dim(S)[1L]
  t(sqrt(matrix(S, k * k)[seq(1L, k * k, by = k + 1L), , drop = FALSE]))
}

# ---- methods ---------------------------------------------------------------------

#' @export
print.vblds <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat("Latent linear dynamical system, fitted by variational ",
      if (length(x$learn)) "EM" else "inference (parameters fixed)", "\n", sep = "")
  Tk <- vapply(x$y, nrow, 1L)
  cat(sprintf("  family: %s   latent_dim: %d   units: %d   trials: %d   time bins: %d\n",
              x$family$family, x$latent_dim, ncol(x$y[[1L]]), length(Tk), sum(Tk)))
  cat(sprintf("  approx: %s   ELBO: %s   iterations: %d%s\n", x$approx,
              format(x$elbo, digits = digits + 3L), x$iterations,
              if (x$converged) "" else "  (not converged)"))
  invisible(x)
}

#' Summarise a latent dynamical system fit
#'
#' @param object A `vblds` fit.
#' @param x A `summary.vblds` object.
#' @param digits Printed digits.
#' @param ... Unused.
#' @return `summary()` returns a list of class `summary.vblds` with the ELBO
#'   terms, the eigenvalues of A (with their moduli and, for complex pairs,
#'   rotation periods in bins) and a per-unit table of loadings norm, offset,
#'   noise variance (gaussian) and mean fitted value.
#' @examples
#' set.seed(1)
#' z <- as.numeric(arima.sim(list(ar = 0.95), 200))
#' y <- outer(z, c(1, -0.5, 0.8)) + matrix(rnorm(600, sd = 0.5), 200)
#' summary(vb_lds(y, 1, control = vb_control(maxit = 30, quiet = TRUE)))
#' @export
summary.vblds <- function(object, ...) {
  p <- object$params
  ev <- eigen(p$A, only.values = TRUE)$values
  period <- ifelse(abs(Im(ev)) > 1e-12, 2 * pi / abs(Arg(ev)), Inf)
  dyn <- data.frame(eigenvalue = format(ev, digits = 4), modulus = Mod(ev), period = period)
  fv <- object$fitted.values
  if (is.list(fv)) fv <- do.call(rbind, fv)
  units <- data.frame(loading_norm = sqrt(rowSums(p$C^2)), offset = p$d,
                      noise_var = if (object$family$family == "gaussian") p$R else NA_real_,
                      mean_fitted = colMeans(fv))
  structure(list(call = object$call, elbo_terms = object$elbo_terms, dynamics = dyn,
                 units = units, Q = p$Q, family = object$family$family, approx = object$approx,
                 iterations = object$iterations, converged = object$converged),
            class = "summary.vblds")
}

#' @rdname summary.vblds
#' @export
print.summary.vblds <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat("Call:\n"); print(x$call)
  cat(sprintf("\n%s observations, %s posterior; %d iterations%s\n", x$family, x$approx,
              x$iterations, if (x$converged) "" else " (not converged)"))
  cat("\nELBO terms:\n"); print(x$elbo_terms, digits = digits + 3L)
  cat("\nDynamics (eigenvalues of A; period in bins):\n"); print(x$dynamics, digits = digits)
  cat("\nUnits:\n"); print(utils::head(x$units, 10L), digits = digits)
  if (nrow(x$units) > 10L) cat(sprintf("... %d more units\n", nrow(x$units) - 10L))
  invisible(x)
}

#' Smoothed latent states and rates of a latent dynamical system
#'
#' @param object A `vblds` fit.
#' @param newdata Optional new trials (a matrix or list of matrices with the
#'   same units); their latent paths are inferred with the fitted parameters
#'   held fixed.
#' @param type `"response"` (smoothed rates E y, for poisson
#'   \eqn{\Delta \exp(c'm + d + c'Sc/2)}), `"link"` (C m + d) or `"latent"`
#'   (posterior means of z, with standard deviations in attribute `"sd"`).
#' @param exposure Poisson exposure for `newdata`, as in [vb_lds()]; by
#'   default the (constant) exposure of the fit.
#' @param ... Unused.
#' @return A T x N (or T x d) matrix, or a list of them for several trials.
#' @examples
#' set.seed(1)
#' z <- as.numeric(arima.sim(list(ar = 0.95), 200))
#' y <- outer(z, c(1, -0.5, 0.8)) + matrix(rnorm(600, sd = 0.5), 200)
#' fit <- vb_lds(y, 1, control = vb_control(maxit = 30, quiet = TRUE))
#' head(predict(fit, type = "latent"))
#' @export
predict.vblds <- function(object, newdata = NULL, type = c("response", "link", "latent"),
                          exposure = NULL, ...) {
  type <- match.arg(type)
  single <- object$single
  if (!is.null(newdata)) {
    single <- !is.list(newdata) || is.data.frame(newdata)
    pois <- object$family$family == "poisson"
    if (pois && is.null(exposure)) {
      e <- unique(unlist(object$exposure))
      if (length(e) != 1L)
        stop("predict.vblds(): the fit used varying exposures; give 'exposure' for 'newdata'.", call. = FALSE)
      exposure <- e
    }
    object <- vb_lds(newdata, object$latent_dim, object$family, object$approx,
                     params = object$params, learn = FALSE, exposure = exposure,
                     control = object$control, blocks = object$block_spec)
  }
  out <- if (type == "latent") {
    lapply(object$posterior, function(po) {
      structure(po$mean, sd = lds_latent_sd(po$cov))
    })
  } else lds_rates(object, type)
  if (single) out[[1L]] else out
}

#' @export
fitted.vblds <- function(object, ...) object$fitted.values

#' Simulate trials from a fitted latent dynamical system
#'
#' Draws new latent paths and observations from the generative model with the
#' fitted parameters.
#'
#' @param object A `vblds` fit.
#' @param nsim Number of trials to simulate.
#' @param seed Optional seed for [set.seed()].
#' @param T Number of time bins per trial; default the length of the first
#'   fitted trial.
#' @param exposure Poisson exposure per bin; default that of the first trial
#'   (recycled).
#' @param ... Unused.
#' @return A list of `nsim` T x N matrices of observations, each with the
#'   latent path (T x d) in attribute `"latent"`.
#' @examples
#' set.seed(1)
#' z <- as.numeric(arima.sim(list(ar = 0.95), 200))
#' y <- outer(z, c(1, -0.5, 0.8)) + matrix(rnorm(600, sd = 0.5), 200)
#' fit <- vb_lds(y, 1, control = vb_control(maxit = 30, quiet = TRUE))
#' sims <- simulate(fit, nsim = 2, seed = 2)
#' dim(sims[[1]])
#' @importFrom stats simulate
#' @export
simulate.vblds <- function(object, nsim = 1, seed = NULL, T = NULL, exposure = NULL, ...) {
  nsim <- check_count(nsim, "nsim")
  if (!is.null(seed)) set.seed(seed)
  if (is.null(T)) T <- nrow(object$y[[1L]])
  T <- check_count(T, "T")
  if (is.null(exposure)) exposure <- object$exposure[[1L]]
  lapply(seq_len(nsim), function(s)
    lds_sim(object$params, T, object$family$family, rep_len(exposure, T)))
}

# One trial from the generative model (R's RNG).
lds_sim <- function(p, T, family, exposure = 1) {
  k <- nrow(p$A); N <- nrow(p$C)
  Lq <- t(chol(p$Q)); L0 <- t(chol(p$V0))
  z <- matrix(0, T, k)
  z[1, ] <- p$m0 + L0 %*% rnorm(k)
  if (T > 1) for (t in 2:T) z[t, ] <- p$A %*% z[t - 1, ] + Lq %*% rnorm(k)
  eta <- sweep(z %*% t(p$C), 2L, p$d, `+`)
  y <- if (family == "poisson") {
    matrix(rpois(T * N, exp(eta) * rep_len(exposure, T)), T)
  } else eta + matrix(rnorm(T * N), T) %*% diag(sqrt(p$R), N)
  structure(y, latent = z)
}

#' Plot a latent dynamical system fit
#'
#' `"latents"` draws the posterior mean of each latent dimension with its
#' credible band, one panel per dimension; `"rates"` draws the observations
#' of each unit (dots: counts per bin for poisson) with the smoothed rate
#' (the posterior mean of E y) and its credible band, one panel per unit;
#' `"elbo"` draws the ELBO trace.  Every panel has a title; the plotted data
#' are returned invisibly.
#' @param x A `vblds` fit.
#' @param which `"latents"`, `"elbo"` or `"rates"`.
#' @param trial Which trial to show.
#' @param units For `"rates"`: which units (columns) to show; the first four
#'   by default.
#' @param level Credible level of the bands.
#' @param ... Passed to [graphics::plot()].
#' @return The plotted data, invisibly: for `"latents"` a list of `mean`,
#'   `lower`, `upper` (T x d); for `"rates"` a list of `observed`, `fitted`,
#'   `lower`, `upper` (T x units); for `"elbo"` a data frame.
#' @examples
#' set.seed(1)
#' z <- as.numeric(arima.sim(list(ar = 0.95), 200))
#' y <- outer(z, c(1, -0.5, 0.8)) + matrix(rnorm(600, sd = 0.5), 200)
#' fit <- vb_lds(y, 1, control = vb_control(maxit = 30, quiet = TRUE))
#' plot(fit)
#' plot(fit, "rates", units = 1:2)
#' @export
plot.vblds <- function(x, which = c("latents", "elbo", "rates"), trial = 1L, units = NULL,
                       level = 0.95, ...) {
  which <- match.arg(which)
  check_level(level)
  if (!is.numeric(trial) || length(trial) != 1L || !trial %in% seq_along(x$posterior))
    stop(sprintf("plot.vblds(): 'trial' must be one of 1..%d.", length(x$posterior)), call. = FALSE)
  if (which == "elbo") {
    it <- seq_along(x$elbo_trace)
    plot(it, x$elbo_trace, type = "l", xlab = "iteration", ylab = "ELBO", main = "ELBO trace", ...)
    return(invisible(data.frame(iteration = it, elbo = x$elbo_trace)))
  }
  z <- qnorm(1 - (1 - level) / 2)
  po <- x$posterior[[trial]]
  T <- nrow(po$mean); tt <- seq_len(T)
  band <- grDevices::adjustcolor("steelblue", 0.35)
  ttl <- if (length(x$posterior) > 1L) sprintf(" (trial %d)", trial) else ""
  if (which == "latents") {
    sd <- lds_latent_sd(po$cov)
    lo <- po$mean - z * sd; hi <- po$mean + z * sd
    k <- x$latent_dim
    op <- par(mfrow = c(k, 1L), mar = c(4.5, 4.5, 2.5, 1)); on.exit(par(op))
    for (j in seq_len(k)) {
      plot(tt, po$mean[, j], type = "n", ylim = range(lo[, j], hi[, j]), xlab = "time bin",
           ylab = paste0("z", j),
           main = sprintf("Latent z%d%s: posterior mean and %g%% band", j, ttl, 100 * level), ...)
      graphics::polygon(c(tt, rev(tt)), c(lo[, j], rev(hi[, j])), col = band, border = NA)
      lines(tt, po$mean[, j], lwd = 2, col = "steelblue4")
    }
    return(invisible(list(mean = po$mean, lower = lo, upper = hi)))
  }
  N <- ncol(x$y[[trial]])
  if (is.null(units)) units <- seq_len(min(4L, N))
  if (!is.numeric(units) || !length(units) || anyNA(units) || any(!units %in% seq_len(N)))
    stop(sprintf("plot.vblds(): 'units' must be unit numbers between 1 and %d.", N), call. = FALSE)
  pois <- x$family$family == "poisson"
  p <- x$params
  eta <- tcrossprod(po$mean, p$C) + rep(p$d, each = T)
  s <- sqrt(lds_eta_var(po$cov, p$C))
  rate <- lds_rates(x)[[trial]]
  if (pois) {
    ex <- x$exposure[[trial]]
    lo <- exp(eta - z * s) * ex; hi <- exp(eta + z * s) * ex
  } else {
    lo <- eta - z * s; hi <- eta + z * s
  }
  yk <- x$y[[trial]]
  op <- par(mfrow = c(length(units), 1L), mar = c(4.5, 4.5, 2.5, 1)); on.exit(par(op))
  for (i in units) {
    plot(tt, yk[, i], type = "n", ylim = range(yk[, i], lo[, i], hi[, i], na.rm = TRUE),
         xlab = "time bin", ylab = if (pois) "count per bin" else "observation",
         main = sprintf("Unit %d%s: data (dots) and smoothed %s with %g%% band", i, ttl,
                        if (pois) "rate" else "mean", 100 * level), ...)
    graphics::polygon(c(tt, rev(tt)), c(lo[, i], rev(hi[, i])), col = band, border = NA)
    graphics::points(tt, yk[, i], pch = 16, cex = 0.7, col = "grey25")
    lines(tt, rate[, i], col = "firebrick", lwd = 2)
  }
  invisible(list(observed = yk[, units, drop = FALSE], fitted = rate[, units, drop = FALSE],
                 lower = lo[, units, drop = FALSE], upper = hi[, units, drop = FALSE]))
}

# ---- the log joint and draws from q (vb_diagnose(), compare_models()) ------------

# theta stacks the latent paths of all trials: trial 1's z_1, ..., z_T (d values
# each), then trial 2's, and so on; one column per draw.
lds_theta_index <- function(fit) {
  n <- fit$latent_dim * vapply(fit$y, nrow, 1L)
  split(seq_len(sum(n)), rep(seq_along(n), n))
}

# Draws of the latent paths from the fitted q, with log q at each draw.  The
# structured q is sampled backwards from its block-tridiagonal precision
# (diagonal blocks D_t, sub-diagonal block L): with the forward Schur
# complements F_1 = D_1, F_t = D_t - L F_{t-1}^{-1} L',
#   z_T ~ N(m_T, F_T^{-1}),  z_t | z_{t+1} ~ N(m_t - F_t^{-1} L'(z_{t+1} - m_{t+1}), F_t^{-1}),
# so log q(z) is the sum of these conditional densities.  The meanfield q is
# a product of N(m_t, S_t).
q_sample.vblds <- function(fit, S) {
  S <- check_count(S, "S")
  k <- fit$latent_dim
  parts <- lapply(fit$posterior, function(po) {
    T <- nrow(po$mean); m <- t(po$mean)
    Z <- array(0, c(k, T, S)); logq <- numeric(S)
    draw <- function(U, t, mu) { # N(mu, (U'U)^{-1}) from the upper factor U of the precision
      e <- matrix(stats::rnorm(k * S), k)
      Z[, t, ] <<- mu + backsolve(U, e)
      logq <<- logq - 0.5 * colSums(e^2) + sum(log(diag(U))) - 0.5 * k * log(2 * pi)
    }
    if (fit$approx == "meanfield") {
      for (t in seq_len(T)) draw(chol(solve(po$cov[, , t])), t, m[, t])
    } else {
      # L: one sub-diagonal block (structured) or one per step, zero where a run starts (block)
      Lt <- if (length(dim(po$L)) == 3L) function(t) po$L[, , t] else function(t) po$L
      F <- array(0, c(k, k, T)); F[, , 1] <- po$D[, , 1]
      if (T > 1) for (t in 2:T)
        F[, , t] <- po$D[, , t] - Lt(t) %*% solve(F[, , t - 1], t(Lt(t)))
      draw(chol((F[, , T] + t(F[, , T])) / 2), T, m[, T])
      if (T > 1) for (t in (T - 1):1) {
        Ft <- (F[, , t] + t(F[, , t])) / 2
        draw(chol(Ft), t, m[, t] - solve(Ft, t(Lt(t + 1)) %*% (Z[, t + 1, ] - m[, t + 1])))
      }
    }
    list(theta = matrix(Z, k * T), logq = logq)
  })
  list(theta = do.call(rbind, lapply(parts, `[[`, "theta")),
       logq = Reduce(`+`, lapply(parts, `[[`, "logq")))
}

# log p(y, z) at the fitted parameters for each column of theta (stacked as in
# q_sample.vblds), written directly from the model's densities.
log_joint.vblds <- function(fit, theta) {
  p <- fit$params; k <- fit$latent_dim
  ix <- lds_theta_index(fit)
  if (!is.matrix(theta) || nrow(theta) != length(unlist(ix)))
    stop(sprintf("log_joint(): 'theta' must be a matrix with %d rows (the stacked latent paths).",
                 length(unlist(ix))), call. = FALSE)
  S <- ncol(theta)
  pois <- fit$family$family == "poisson"
  R0 <- chol(p$V0); Rq <- chol(p$Q)
  lmvn <- function(U, x) -0.5 * colSums(backsolve(U, x, transpose = TRUE)^2) - sum(log(diag(U))) -
    0.5 * k * log(2 * pi)
  lp <- numeric(S)
  for (j in seq_along(ix)) {
    y <- fit$y[[j]]; T <- nrow(y)
    Z <- array(theta[ix[[j]], ], c(k, T, S))
    lp <- lp + lmvn(R0, matrix(Z[, 1, ], k) - p$m0)
    for (t in seq_len(T)) {
      Zt <- matrix(Z[, t, ], k)
      if (t > 1) lp <- lp + lmvn(Rq, Zt - p$A %*% matrix(Z[, t - 1, ], k))
      o <- !is.na(y[t, ])
      if (!any(o)) next
      eta <- p$C[o, , drop = FALSE] %*% Zt + p$d[o]
      lp <- lp + colSums(if (pois) {
        stats::dpois(y[t, o], exp(eta) * fit$exposure[[j]][t], log = TRUE)
      } else stats::dnorm(y[t, o], eta, sqrt(p$R[o]), log = TRUE), na.rm = FALSE)
    }
  }
  lp
}
