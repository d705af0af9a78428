# Amortized inference (issue 14): an inference network q(z | y) trained with
# the decoder of a latent-factor model of trials.  The engine is in C
# (src/amortized.c, network in src/mlp.c); this file builds its inputs,
# checks them, and turns the result into a "vbamortized" posterior.

#' An inference network (encoder) for vb_amortized()
#'
#' A multilayer perceptron mapping the (transformed, standardised) responses
#' of one trial to the parameters of its Gaussian q(z | y) = N(m, Sigma):
#' the mean m and either a diagonal covariance (`covariance = "diagonal"`,
#' Sigma = diag(D), the network outputs log D) or a low-rank-plus-diagonal
#' one (`"lowrank"`, Sigma = diag(D) + V V' with V a latent_dim x `rank`
#' matrix, also an output of the network), which can follow the correlations
#' between latent factors that the posterior of a trial has when loadings
#' overlap.  The closed-form ELBO, its gradients, refinement and the gaps
#' work with both.
#'
#' The input of the network is `t(y)` after `transform` and a per-unit
#' standardisation (the training trials' mean and standard deviation; a
#' constant unit is only centred): `"log1p"` (log(1 + y), the default for
#' the poisson decoder), `"sqrt"` or `"identity"` (the default for the
#' gaussian decoder).  Standardisation is affine, so a linear encoder
#' (`hidden = integer(0)`) stays linear in y and can represent the exact
#' posterior mean of probabilistic PCA.
#'
#' @param hidden Widths of the hidden layers; `integer(0)` gives a linear
#'   (affine) encoder.
#' @param activation `"tanh"`, `"relu"` or `"softplus"`, applied after every
#'   hidden layer.
#' @param transform Input transform: `NULL` (default: `"log1p"` for
#'   `decoder = "poisson"`, `"identity"` for `"gaussian"`), `"log1p"`,
#'   `"sqrt"` or `"identity"`.
#' @param covariance `"diagonal"` (default) or `"lowrank"` (diagonal plus a
#'   rank-`rank` factor).
#' @param rank Rank of the factor V for `covariance = "lowrank"`: a whole
#'   number from 1 to latent_dim (rank = latent_dim gives every Gaussian).
#' @return An object of class `vb_mlp`.
#' @examples
#' mlp(hidden = c(32, 32), activation = "relu")
#' mlp(hidden = integer(0)) # linear encoder
#' mlp(covariance = "lowrank", rank = 2)
#' @export
mlp <- function(hidden = c(64, 64), activation = c("tanh", "relu", "softplus"), transform = NULL,
                covariance = c("diagonal", "lowrank"), rank = 1L) {
  activation <- match.arg(activation)
  covariance <- match.arg(covariance)
  if (!is.numeric(rank) || length(rank) != 1L || !is.finite(rank) || rank < 1 || rank != round(rank) ||
      rank > 1e4)
    stop("mlp(): 'rank' must be a whole number >= 1 (the rank of the low-rank covariance factor).", call. = FALSE)
  if (!is.numeric(hidden) || anyNA(hidden) || any(hidden < 1) || any(hidden != round(hidden)) ||
      any(hidden > 1e5) || length(hidden) > 60L)
    stop("mlp(): 'hidden' must be whole numbers between 1 and 100000 (at most 60 layers), or integer(0) for a linear encoder.",
         call. = FALSE)
  if (!is.null(transform) && (!is.character(transform) || length(transform) != 1L ||
                              !transform %in% c("log1p", "sqrt", "identity")))
    stop("mlp(): 'transform' must be NULL, \"log1p\", \"sqrt\" or \"identity\".", call. = FALSE)
  structure(list(hidden = as.integer(hidden), activation = activation, transform = transform,
                 covariance = covariance, rank = if (covariance == "lowrank") as.integer(rank) else 0L),
            class = "vb_mlp")
}

#' @export
print.vb_mlp <- function(x, ...) {
  cat(sprintf("Inference network: %s, %s activation, input transform %s, %s covariance\n",
              if (length(x$hidden)) paste("hidden layers", paste(x$hidden, collapse = " x ")) else "linear (no hidden layer)",
              x$activation, if (is.null(x$transform)) "by decoder" else x$transform,
              if (amz_rank(x) > 0L) sprintf("low-rank (rank %d) plus diagonal", amz_rank(x)) else "diagonal"))
  invisible(x)
}

#' Tuning knobs of vb_amortized()
#'
#' @param epochs Maximum number of passes over the training trials.
#' @param batch_size Trials per minibatch (at most the number of training
#'   trials).
#' @param step_size Adam step size.
#' @param check_every The stopping ELBO is evaluated after every pass over
#'   the training trials, or after every `check_every` minibatches when a
#'   pass has more (large data sets then need no more than a few passes).
#' @param patience Checks (see `check_every`) without a relative
#'   improvement of the stopping ELBO by more than `tol` before the step
#'   size is halved (training then resumes from the best parameters so far).
#' @param decays Step-size halvings before training stops; the fit has
#'   converged when the stopping ELBO then still does not improve.
#' @param tol Relative improvement of the stopping ELBO that counts (see
#'   `patience`): with the default 1e-5 and a per-trial ELBO of -100 nats,
#'   gains below 1e-3 nats per trial between checks count as a plateau.
#' @param quiet If `FALSE`, runs longer than a second print their progress.
#' @param estimator Gradient of the ELBO: `"closed_form"` (default; exact
#'   expectations, only minibatch noise) or `"reparam"`, the reparameterised
#'   Monte Carlo estimator with `draws` samples per trial and step (as in a
#'   variational autoencoder; for checking, it is noisier and slower).
#' @param draws Samples per trial for `estimator = "reparam"`.
#' @return A list of class `amortized_control`.
#' @examples
#' amortized_control(epochs = 200, batch_size = 64)
#' @export
amortized_control <- function(epochs = 1000L, batch_size = 128L, step_size = 0.005, check_every = 100L,
                              patience = 10L,
                              decays = 4L, tol = 1e-5, quiet = FALSE,
                              estimator = c("closed_form", "reparam"), draws = 1L) {
  estimator <- match.arg(estimator)
  whole <- function(x, nm, lo, hi) {
    if (!is.numeric(x) || length(x) != 1L || !is.finite(x) || x != round(x) || x < lo || x > hi)
      stop(sprintf("amortized_control(): '%s' must be a whole number between %s and %s.", nm,
                   format(lo), format(hi, big.mark = ",")), call. = FALSE)
    as.integer(x)
  }
  pos <- function(x, nm, hi) {
    if (!is.numeric(x) || length(x) != 1L || !is.finite(x) || x <= 0 || x > hi)
      stop(sprintf("amortized_control(): '%s' must be a positive number at most %g.", nm, hi), call. = FALSE)
    as.double(x)
  }
  if (!is.logical(quiet) || length(quiet) != 1L || is.na(quiet))
    stop("amortized_control(): 'quiet' must be TRUE or FALSE.", call. = FALSE)
  structure(list(epochs = whole(epochs, "epochs", 1, 1e7), batch_size = whole(batch_size, "batch_size", 1, 1e6),
                 step_size = pos(step_size, "step_size", 1e6), check_every = whole(check_every, "check_every", 1, 1e7),
                 patience = whole(patience, "patience", 1, 1e6),
                 decays = whole(decays, "decays", 0, 1000), tol = pos(tol, "tol", 1), quiet = quiet,
                 estimator = estimator,
                 draws = if (estimator == "reparam") whole(draws, "draws", 1, 1e5) else 0L),
            class = "amortized_control")
}

as_amortized_control <- function(control) {
  if (inherits(control, "amortized_control")) return(control)
  if (is.null(control)) return(amortized_control())
  if (inherits(control, "vb_control"))
    return(amortized_control(quiet = control$quiet))
  if (!is.list(control) || (length(control) && is.null(names(control))))
    stop("vb_amortized(): 'control' must be amortized_control(...) or a named list of its arguments.", call. = FALSE)
  bad <- setdiff(names(control), names(formals(amortized_control)))
  if (length(bad))
    stop(sprintf("vb_amortized(): unknown control setting%s %s; see ?amortized_control.",
                 if (length(bad) > 1) "s" else "", paste(bad, collapse = ", ")), call. = FALSE)
  do.call(amortized_control, control)
}

#' Amortized variational inference for latent factors of trials
#'
#' Fits the latent-factor model
#' \deqn{z_i \sim N(0, I_d),\quad y_{ij} \sim \mathrm{Poisson}(\Delta_i \exp(c_j^\top z_i + d_j))}
#' (`decoder = "poisson"`, e.g. spike counts of N units in trial i) or
#' \eqn{y_i \sim N(C z_i + d, \mathrm{diag}(\psi))} (`"gaussian"`: factor
#' analysis, or probabilistic PCA with `noise = "isotropic"`), with an
#' inference network (encoder, [mlp()]) that maps each trial's responses to
#' q(z_i | y_i) = N(m(y_i), diag v(y_i)).  Encoder and decoder are trained
#' jointly, as in a variational autoencoder, by maximising the total ELBO
#' with Adam on minibatches in C.  Both expected log-likelihoods are in
#' closed form under a Gaussian q (E exp(c'z) = exp(c'm + c'Sc/2)), so the
#' gradients carry no Monte Carlo noise, only minibatch noise.
#'
#' Training stops early on the mean ELBO of the held-out `validation`
#' trials (without any, on the training mean of each epoch): after
#' `patience` epochs without improvement the step size halves and training
#' resumes from the best parameters; after `decays` halvings it stops and
#' the best parameters are returned.  `converged` is `TRUE` when this
#' criterion was met within `epochs` with finite ELBOs; otherwise a warning
#' says why (whatever `quiet` says).  Runs are reproducible under
#' [set.seed()] (the split, the initial weights and the minibatch order use
#' R's generator) and can be interrupted.
#'
#' Missing values (`NA`) in `y` are refused with an error: drop or impute
#' those trials.  The latent space is identified only up to rotation, so
#' compare subspaces or rates, not raw loadings.
#'
#' @param y A numeric trials x units matrix (counts for `"poisson"`).
#' @param latent_dim Latent dimension d, a whole number with 1 <= d < N units.
#' @param decoder `"poisson"` (log link) or `"gaussian"`.
#' @param encoder The inference network, [mlp()].
#' @param learn_decoder If `FALSE`, the decoder is held at `params` (all of
#'   `C`, `d` and, for gaussian, `psi` are then needed) and only the encoder
#'   is trained, to study inference alone.
#' @param params `NULL` or a list with `C` (N x d loadings), `d` (N
#'   intercepts) and, gaussian only, `psi` (noise variances: N values, or one
#'   with `noise = "isotropic"`): starting values, or the fixed decoder with
#'   `learn_decoder = FALSE`.  Missing ones are initialised from the data
#'   (principal components of the transformed responses).
#' @param exposure Poisson only: the bin width or exposure Delta_i of each
#'   trial (one number, or one per trial; positive and finite).  Default 1.
#' @param validation Fraction of trials (drawn at random) held out for early
#'   stopping, in \[0, 0.9\], or a vector of trial numbers.  `0`: none.
#' @param noise Gaussian decoder: `"diagonal"` psi (factor analysis) or
#'   `"isotropic"` (one psi for all units: probabilistic PCA).
#' @param control [amortized_control()] or a named list of its arguments.
#' @return An object of class `c("vbamortized", "vb_posterior")` with
#'   `params` (the decoder: `C`, `d`, `psi`), `coefficients` (the decoder as
#'   a units x (1 + d) matrix, plus `psi`), `elbo` (total ELBO of the
#'   training trials), `elbo_validation` (total over the validation trials),
#'   `elbo_trace` (per epoch, the training-trial total during that epoch),
#'   `trace` (per epoch, the mean per-trial ELBO of training and validation
#'   trials), `posterior` (`mean` and `var`, trials x d, from the encoder),
#'   `elbo_trials` (ELBO of each trial), `train`, `validation` (trial
#'   numbers), `converged`, `status`, `iterations` (epochs), `time`, and what
#'   [predict.vbamortized()] needs.
#' @seealso [predict.vbamortized()] (new trials, refinement),
#'   [summary.vbamortized()] (amortization and approximation gaps, IWAE),
#'   [plot.vbamortized()].
#' @examples
#' set.seed(1)
#' z <- matrix(rnorm(300 * 2), 300)
#' C <- matrix(rnorm(10 * 2, sd = 0.4), 10)
#' y <- matrix(rpois(3000, exp(z %*% t(C) + 1)), 300)
#' fit <- vb_amortized(y, 2, encoder = mlp(hidden = 16),
#'                     control = amortized_control(patience = 3, decays = 1, quiet = TRUE))
#' fit
#' head(predict(fit, y[1:3, ], refine = 2)$mean)
#' @export
vb_amortized <- function(y, latent_dim, decoder = c("poisson", "gaussian"), encoder = mlp(),
                         learn_decoder = TRUE, params = NULL, exposure = NULL, validation = 0.1,
                         noise = c("diagonal", "isotropic"), control = amortized_control()) {
  t0 <- proc.time()[["elapsed"]]
  cl <- match.call()
  decoder <- match.arg(decoder)
  noise <- match.arg(noise)
  control <- as_amortized_control(control)
  if (!inherits(encoder, "vb_mlp"))
    stop("vb_amortized(): 'encoder' must be made by mlp(), e.g. mlp(hidden = c(64, 64)).", call. = FALSE)
  if (!is.logical(learn_decoder) || length(learn_decoder) != 1L || is.na(learn_decoder))
    stop("vb_amortized(): 'learn_decoder' must be TRUE or FALSE.", call. = FALSE)
  Y <- amz_check_y(y, decoder, "vb_amortized()")
  n <- nrow(Y); N <- ncol(Y)
  if (n < 2L)
    stop("vb_amortized(): 'y' has one trial; amortized inference learns from many trials (for one trial use vb_fit()).",
         call. = FALSE)
  if (!is.numeric(latent_dim) || length(latent_dim) != 1L || !is.finite(latent_dim) ||
      latent_dim != round(latent_dim) || latent_dim < 1)
    stop("vb_amortized(): 'latent_dim' must be a single whole number >= 1.", call. = FALSE)
  latent_dim <- as.integer(latent_dim)
  rank <- amz_rank(encoder)
  if (rank > latent_dim)
    stop(sprintf("vb_amortized(): the low-rank covariance factor has rank %d, more than latent_dim = %d; use mlp(rank = ) <= latent_dim.",
                 rank, latent_dim), call. = FALSE)
  if (rank > 0L && control$estimator == "reparam")
    stop("vb_amortized(): amortized_control(estimator = \"reparam\") is implemented for the diagonal covariance only; use mlp(covariance = \"diagonal\") or the closed-form estimator.",
         call. = FALSE)
  if (latent_dim >= N)
    stop(sprintf("vb_amortized(): 'latent_dim' (%d) must be smaller than the number of units N = %d; use fewer latent dimensions.",
                 latent_dim, N), call. = FALSE)
  off <- amz_check_exposure(exposure, n, decoder, "vb_amortized()")
  split <- amz_split(validation, n)
  params <- amz_check_params(params, N, latent_dim, decoder, noise, learn_decoder)
  tr <- encoder$transform
  if (is.null(tr)) tr <- if (decoder == "poisson") "log1p" else "identity"
  X <- amz_transform(Y, tr)
  ctr <- colMeans(X[split$train, , drop = FALSE])
  scl <- apply(X[split$train, , drop = FALSE], 2L, stats::sd)
  scl[!is.finite(scl) | scl <= 0] <- 1
  inp <- list(transform = tr, center = ctr, scale = scl)
  if (ncol(Y) > 1e5) stop("vb_amortized(): at most 100000 units.", call. = FALSE)
  params <- amz_init_decoder(Y[split$train, , drop = FALSE], off[split$train], latent_dim, decoder, noise, params)
  sizes <- c(N, encoder$hidden, latent_dim * (2L + rank))
  theta0 <- c(amz_init_encoder(sizes, latent_dim, rank), amz_pack_decoder(params, decoder))
  model <- amz_model(Y, X, off, inp, decoder, noise, latent_dim, sizes, encoder$activation, learn_decoder, rank)
  ctl <- c(unclass(control)[c("epochs", "batch_size", "step_size", "check_every", "patience", "decays", "tol",
                              "quiet", "draws")],
           list(train = split$train, validation = split$validation))
  core <- .Call(C_amortized_fit, model, theta0, ctl)
  converged <- check_status(core$status, "vb_amortized()", core$checks, control$tol, "amortized_control(epochs)")

  encoder$transform <- tr
  fit <- list(theta = core$theta, model_info = list(sizes = sizes, activation = encoder$activation,
                                                    input = inp, noise = noise, rank = rank),
              decoder = decoder, latent_dim = latent_dim, encoder = encoder, learn_decoder = learn_decoder)
  fit$params <- amz_unpack_decoder(core$theta, sizes, N, latent_dim, decoder, noise)
  ev <- amz_eval(fit, Y, off)
  ntr <- length(split$train)
  fit$coefficients <- amz_coef_matrix(fit$params, colnames(Y))
  fit$elbo <- sum(ev$elbo[split$train])
  fit$elbo_validation <- if (length(split$validation)) sum(ev$elbo[split$validation]) else NA_real_
  fit$elbo_trace <- core$train_trace * ntr
  fit$trace <- data.frame(check = seq_len(core$checks), epoch = core$epoch_trace, train = core$train_trace,
                          validation = if (length(split$validation)) core$validation_trace else NA_real_)
  fit$posterior <- list(mean = t(ev$m), var = t(ev$v))
  if (rank > 0L) {
    fit$posterior$cov_diag <- t(ev$D)
    fit$posterior$cov_factor <- aperm(array(ev$V, c(latent_dim, rank, n)), c(3L, 1L, 2L))
  }
  fit$elbo_trials <- ev$elbo
  fit$train <- split$train
  fit$validation <- split$validation
  fit$converged <- converged
  fit$status <- core$status
  fit$iterations <- core$checks
  fit$epochs <- core$epochs
  fit$decays <- core$decays
  fit$data <- Y
  fit$offset_all <- off
  # what compare_models() checks: the training trials
  fit$y <- Y[split$train, , drop = FALSE]
  fit$exposure <- exp(off[split$train])
  fit$family <- if (decoder == "poisson") stats::poisson() else stats::gaussian()
  fit$control <- control
  fit$call <- cl
  fit$time <- proc.time()[["elapsed"]] - t0
  class(fit) <- c("vbamortized", "vb_posterior")
  fit
}

# ---- input checks -------------------------------------------------------------

amz_check_y <- function(y, decoder, what) {
  if (is.data.frame(y)) y <- as.matrix(y)
  if (!is.matrix(y) || !(is.numeric(y) || is.logical(y)) || is.complex(y))
    stop(sprintf("%s: 'y' must be a numeric matrix, trials x units.", what), call. = FALSE)
  if (nrow(y) < 1L || ncol(y) < 1L) stop(sprintf("%s: 'y' has no trials or no units.", what), call. = FALSE)
  storage.mode(y) <- "double"
  if (anyNA(y))
    stop(sprintf("%s: 'y' contains NA (missing) values; missing responses are not masked here, so drop or impute those trials.",
                 what), call. = FALSE)
  if (any(is.infinite(y))) stop(sprintf("%s: 'y' contains infinite values.", what), call. = FALSE)
  if (decoder == "poisson" && (any(y < 0) || any(y != round(y))))
    stop(sprintf("%s: the poisson decoder needs counts: whole numbers >= 0 in 'y' (use decoder = \"gaussian\" for continuous data).",
                 what), call. = FALSE)
  if (decoder == "gaussian" && !is.finite(sum(y^2)))
    stop(sprintf("%s: 'y' is too large to compute with (its squares overflow); rescale it.", what), call. = FALSE)
  y
}

amz_check_exposure <- function(exposure, n, decoder, what) {
  if (is.null(exposure)) return(rep(0, n))
  if (decoder != "poisson")
    stop(sprintf("%s: 'exposure' applies to the poisson decoder only; leave it NULL.", what), call. = FALSE)
  if (!is.numeric(exposure) || !is.null(dim(exposure)) && length(dim(exposure)) > 1L && min(dim(exposure)) > 1L)
    stop(sprintf("%s: 'exposure' must be a numeric vector.", what), call. = FALSE)
  if (!length(exposure) %in% c(1L, n))
    stop(sprintf("%s: 'exposure' must be one number or one per trial (%d); it has length %d.", what, n,
                 length(exposure)), call. = FALSE)
  if (any(!is.finite(exposure)) || any(exposure <= 0))
    stop(sprintf("%s: 'exposure' must be positive and finite (a bin width or exposure time).", what), call. = FALSE)
  rep_len(log(as.double(exposure)), n)
}

amz_split <- function(validation, n) {
  if (!is.numeric(validation) || anyNA(validation) || length(validation) < 1L)
    stop("vb_amortized(): 'validation' must be a fraction in [0, 0.9] or a vector of trial numbers.", call. = FALSE)
  if (length(validation) == 1L && validation < 1) {
    if (validation < 0) stop("vb_amortized(): 'validation' must be a fraction in [0, 0.9] or a vector of trial numbers.", call. = FALSE)
    if (validation > 0.9) stop("vb_amortized(): 'validation' may hold out at most 90% of the trials.", call. = FALSE)
    nv <- floor(validation * n)
    val <- if (nv > 0) sort(sample.int(n, nv)) else integer(0)
  } else {
    if (any(validation != round(validation)) || any(validation < 1) || any(validation > n) || anyDuplicated(validation))
      stop(sprintf("vb_amortized(): 'validation' trial numbers must be distinct whole numbers in 1..%d.", n), call. = FALSE)
    val <- sort(as.integer(validation))
  }
  train <- setdiff(seq_len(n), val)
  if (length(train) < 1L) stop("vb_amortized(): 'validation' leaves no training trials.", call. = FALSE)
  list(train = as.integer(train), validation = as.integer(val))
}

amz_check_params <- function(params, N, d, decoder, noise, learn) {
  need <- c("C", "d", if (decoder == "gaussian") "psi")
  if (is.null(params)) {
    if (!learn) stop(sprintf("vb_amortized(): with learn_decoder = FALSE give the decoder in 'params' (%s).",
                             paste(need, collapse = ", ")), call. = FALSE)
    return(list())
  }
  if (!is.list(params) || (length(params) && is.null(names(params))))
    stop("vb_amortized(): 'params' must be a named list with C, d (and psi for gaussian).", call. = FALSE)
  bad <- setdiff(names(params), c("C", "d", "psi"))
  if (length(bad)) stop(sprintf("vb_amortized(): 'params' has unknown element(s) %s; use C, d, psi.",
                                paste(bad, collapse = ", ")), call. = FALSE)
  if (!learn && length(miss <- setdiff(need, names(params))))
    stop(sprintf("vb_amortized(): with learn_decoder = FALSE, 'params' must give %s.", paste(miss, collapse = ", ")),
         call. = FALSE)
  fin <- function(x) is.numeric(x) && all(is.finite(x))
  if (!is.null(params$C)) {
    C <- params$C
    if (is.null(dim(C)) && d == 1L) C <- matrix(C, ncol = 1L)
    if (!is.matrix(C) || !fin(C) || nrow(C) != N || ncol(C) != d)
      stop(sprintf("vb_amortized(): 'params$C' must be a finite %d x %d matrix (units x latent_dim).", N, d), call. = FALSE)
    params$C <- matrix(as.double(C), N, d)
  }
  if (!is.null(params$d) && (!fin(params$d) || length(params$d) != N))
    stop(sprintf("vb_amortized(): 'params$d' must be %d finite numbers (one per unit).", N), call. = FALSE)
  if (!is.null(params$psi)) {
    if (decoder == "poisson") stop("vb_amortized(): 'params$psi' is for the gaussian decoder only.", call. = FALSE)
    k <- if (noise == "isotropic") 1L else N
    if (!fin(params$psi) || !(length(params$psi) %in% unique(c(1L, k))) || any(params$psi <= 0) ||
        noise == "isotropic" && length(unique(params$psi)) > 1L)
      stop(sprintf("vb_amortized(): 'params$psi' must be positive finite noise variances: %s.",
                   if (k == 1L) "one number (noise = \"isotropic\")" else sprintf("one or %d numbers", N)), call. = FALSE)
    params$psi <- rep_len(as.double(params$psi), k)
  }
  params
}

amz_transform <- function(Y, tr) switch(tr, log1p = log1p(pmax(Y, 0)), sqrt = sqrt(pmax(Y, 0)), identity = Y)

# Decoder starting values from the principal components of the training
# trials (log rates for poisson); given params take precedence.
amz_init_decoder <- function(Y, off, d, decoder, noise, params) {
  N <- ncol(Y)
  if (decoder == "poisson") {
    Z <- log((Y + 0.5) / exp(off))
  } else Z <- Y
  mu <- colMeans(Z)
  Zc <- sweep(Z, 2L, mu)
  sv <- svd(Zc / sqrt(max(nrow(Z) - 1, 1)), nu = 0, nv = d)
  lam <- sv$d[seq_len(d)]^2
  if (decoder == "poisson") {
    C0 <- sv$v[, seq_len(d), drop = FALSE] %*% diag(sqrt(lam) * 0.5, d)
    d0 <- log(colMeans(Y / exp(off)) + 1e-3) - 0.5 * rowSums(C0^2)
    psi0 <- NULL
  } else {
    rest <- if (length(sv$d) > d) sum(sv$d[-seq_len(d)]^2) / (N - d) else 0
    rest <- max(rest, 1e-3 * mean(lam), 1e-8)
    C0 <- sv$v[, seq_len(d), drop = FALSE] %*% diag(sqrt(pmax(lam - rest, 1e-3 * lam)), d)
    d0 <- mu
    psi0 <- if (noise == "isotropic") rest else pmax(apply(Y, 2L, stats::var) - rowSums(C0^2), rest * 1e-2)
  }
  list(C = if (is.null(params$C)) C0 else params$C, d = if (is.null(params$d)) d0 else as.double(params$d),
       psi = if (decoder == "poisson") NULL else if (is.null(params$psi)) psi0 else params$psi)
}

# Glorot-scaled weights; the output layer starts small with log variances
# at log(0.5), so q starts near the prior.  A low-rank factor starts small
# but not at 0 (V = 0 is a stationary point of the ELBO in V).
amz_init_encoder <- function(sizes, d, rank) {
  L <- length(sizes) - 1L
  unlist(lapply(seq_len(L), function(l) {
    ni <- sizes[l]; no <- sizes[l + 1L]
    sc <- sqrt(2 / (ni + no)) * if (l == L) 0.1 else 1
    b <- if (l == L) c(rep(0, d), rep(log(0.5), d), stats::rnorm(d * rank, sd = 0.1)) else rep(0, no)
    c(stats::rnorm(no * ni, sd = sc), b)
  }))
}

amz_epochs_text <- function(x) {
  ep <- if (is.null(x$epochs)) x$iterations else x$epochs
  sprintf("%s epochs (%d checks)", format(signif(ep, 3)), x$iterations)
}

amz_rank <- function(encoder) if (is.null(encoder$rank)) 0L else encoder$rank

amz_nenc <- function(sizes) {
  L <- length(sizes) - 1L
  sum(sizes[-1L] * sizes[-(L + 1L)] + sizes[-1L])
}

amz_pack_decoder <- function(p, decoder) c(as.double(p$C), as.double(p$d), if (decoder == "gaussian") log(p$psi))

amz_unpack_decoder <- function(theta, sizes, N, d, decoder, noise) {
  o <- amz_nenc(sizes)
  C <- matrix(theta[o + seq_len(N * d)], N, d)
  dd <- theta[o + N * d + seq_len(N)]
  psi <- if (decoder == "gaussian") exp(theta[o + N * d + N + seq_len(if (noise == "isotropic") 1L else N)])
  list(C = C, d = dd, psi = psi)
}

amz_coef_matrix <- function(p, units) {
  d <- ncol(p$C)
  cf <- cbind("(Intercept)" = p$d, p$C)
  colnames(cf) <- c("(Intercept)", paste0("z", seq_len(d)))
  if (!is.null(p$psi)) cf <- cbind(cf, psi = rep_len(p$psi, nrow(cf)))
  rownames(cf) <- if (is.null(units)) paste0("unit", seq_len(nrow(cf))) else units
  cf
}

# The list src/amortized.c reads (amz_unpack).
amz_model <- function(Y, X, off, inp, decoder, noise, d, sizes, activation, learn, rank) {
  storage.mode(Y) <- "double"
  Xs <- sweep(sweep(X, 2L, inp$center), 2L, inp$scale, "/")
  list(y = t(Y), x = t(Xs), offset = as.double(off), family = if (decoder == "poisson") 1L else 0L,
       latent_dim = as.integer(d), rank = as.integer(rank), npsi = if (decoder == "poisson") 0L else if (noise == "isotropic") 1L else ncol(Y),
       learn_decoder = learn, activation = match(activation, c("tanh", "relu", "softplus")) - 1L,
       sizes = as.integer(sizes))
}

fit_model_amz <- function(fit, Y, off) {
  mi <- fit$model_info
  X <- amz_transform(Y, mi$input$transform)
  amz_model(Y, X, off, mi$input, fit$decoder, mi$noise, fit$latent_dim, mi$sizes, mi$activation,
            fit$learn_decoder, amz_fit_rank(fit))
}

amz_fit_rank <- function(fit) if (is.null(fit$model_info$rank)) 0L else fit$model_info$rank

amz_eval <- function(fit, Y, off, grad = FALSE) {
  r <- .Call(C_amortized_eval, fit_model_amz(fit, Y, off), fit$theta, list(grad = grad, draws = 0L))
  if (r$status != 0L) check_status(r$status, "vb_amortized(): evaluating the encoder")
  r
}

# New trials: checked against the fit (units, counts, exposure).
amz_newdata <- function(object, newdata, exposure, what) {
  if (is.null(newdata)) {
    if (!is.null(exposure)) stop(sprintf("%s: 'exposure' goes with 'newdata'.", what), call. = FALSE)
    return(list(Y = object$data, off = object$offset_all))
  }
  if (is.null(dim(newdata)) && is.numeric(newdata) && length(newdata) == ncol(object$data))
    newdata <- matrix(newdata, 1L)
  Y <- amz_check_y(newdata, object$decoder, what)
  if (ncol(Y) != ncol(object$data))
    stop(sprintf("%s: 'newdata' must have the fit's %d units as columns; it has %d.", what, ncol(object$data), ncol(Y)),
         call. = FALSE)
  list(Y = Y, off = amz_check_exposure(exposure, nrow(Y), object$decoder, what))
}

check_refine <- function(refine, what) {
  if (!is.numeric(refine) || length(refine) != 1L || !is.finite(refine) || refine < 0 ||
      refine != round(refine) || refine > 1e6)
    stop(sprintf("%s: 'refine' must be a whole number of Newton steps >= 0.", what), call. = FALSE)
  as.integer(refine)
}

# Refinement from q = list(m, v, V) (d x n, d x n, d r x n as C_amortized_eval
# returns them; v is D for a low-rank fit).
amz_refine <- function(fit, Y, off, q, steps, tol = 1e-12) {
  r <- .Call(C_amortized_refine, fit_model_amz(fit, Y, off), fit$theta,
             list(m = q$m, v = if (amz_fit_rank(fit) > 0L) q$D else q$v, V = as.double(q$V)),
             list(steps = steps, tol = tol))
  if (any(r$status == 6L)) check_status(6L, "predict()")
  r
}

# The encoder alone on the trials of Y (C_amortized_encode): no likelihood.
amz_encode <- function(fit, Y, what) {
  mi <- fit$model_info
  enc <- list(sizes = as.integer(mi$sizes), activation = match(mi$activation, c("tanh", "relu", "softplus")) - 1L,
              latent_dim = fit$latent_dim, rank = amz_fit_rank(fit),
              transform = match(mi$input$transform, c("identity", "log1p", "sqrt")) - 1L,
              counts = fit$decoder == "poisson", center = as.double(mi$input$center),
              scale = as.double(mi$input$scale))
  r <- .Call(C_amortized_encode, enc, fit$theta, Y)
  if (r$status == 8L) amz_check_y(Y, fit$decoder, what) # says what was wrong
  if (r$status != 0L) check_status(r$status, what)
  r
}

#' Posterior of the latent factors for (new) trials
#'
#' One forward pass of the inference network gives q(z | y) for each trial
#' (all trials at once, blocks of trials through level-3 BLAS, in C; no
#' likelihood is evaluated unless asked for).  `refine = k` then takes up to
#' k steps per trial on that trial's closed-form ELBO (semi-amortized
#' inference), from the encoder's output towards the per-trial optimum q*_i of
#' the encoder's family: for the diagonal family Newton steps in (m, D), for
#' the low-rank family a Newton step in m followed by BFGS in (log D, V).
#' Each step increases the ELBO (step halving).
#'
#' @param object A fit from [vb_amortized()].
#' @param newdata A trials x units matrix of new trials; `NULL` (default)
#'   uses the fitted trials.
#' @param exposure Poisson: exposure of the new trials (one, or one per
#'   trial).  The encoder sees the counts only; the exposure enters the ELBO
#'   and so refinement.
#' @param refine Refinement steps per trial after the forward pass (0: none).
#' @param elbo If `TRUE` (implied by `refine > 0`), also each trial's ELBO.
#' @param ... Unused.
#' @return A list with `mean` and `var` (trials x d: the mean and marginal
#'   variances of each trial's Gaussian q); for a low-rank encoder also
#'   `cov_diag` (trials x d, D) and `cov_factor` (trials x d x rank, V), so
#'   that trial i's covariance is `diag(cov_diag[i, ]) + tcrossprod(cov_factor[i, , ])`.
#'   With `elbo = TRUE` or `refine > 0` also `elbo` (each trial's ELBO after
#'   refinement), `elbo_encoder` (before) and `steps` (steps taken per trial).
#' @examples
#' set.seed(1)
#' y <- matrix(rpois(200 * 6, 3), 200)
#' fit <- vb_amortized(y, 1, encoder = mlp(hidden = 8),
#'                     control = amortized_control(patience = 3, decays = 1, quiet = TRUE))
#' head(predict(fit, y[1:5, ])$mean)
#' p <- predict(fit, y[1:5, ], refine = 2)
#' p$elbo - p$elbo_encoder # the gain from refinement (>= 0)
#' @export
predict.vbamortized <- function(object, newdata = NULL, exposure = NULL, refine = 0, elbo = FALSE, ...) {
  what <- "predict()"
  refine <- check_refine(refine, what)
  if (!is.logical(elbo) || length(elbo) != 1L || is.na(elbo))
    stop("predict(): 'elbo' must be TRUE or FALSE.", call. = FALSE)
  d <- object$latent_dim
  rank <- amz_fit_rank(object)
  nms <- paste0("z", seq_len(d))
  if (refine == 0L && !elbo) {
    # the fast path: the encoder on the data as given, checks in C
    if (is.null(newdata)) {
      if (!is.null(exposure)) stop("predict(): 'exposure' goes with 'newdata'.", call. = FALSE)
      Y <- object$data
    } else {
      Y <- amz_as_y(object, newdata, what)
      if (!is.null(exposure)) amz_check_exposure(exposure, nrow(Y), object$decoder, what)
    }
    e <- amz_encode(object, Y, what)
    out <- list(mean = e$mean, var = e$var)
    if (rank > 0L) {
      out$cov_diag <- e$D
      out$cov_factor <- array(e$V, c(nrow(Y), d, rank))
    }
  } else {
    nd <- amz_newdata(object, newdata, exposure, what)
    ev <- amz_eval(object, nd$Y, nd$off)
    q <- ev
    out <- list(elbo = ev$elbo, elbo_encoder = ev$elbo, steps = integer(nrow(nd$Y)))
    if (refine > 0L) {
      q <- amz_refine(object, nd$Y, nd$off, ev, refine)
      out$elbo <- q$elbo
      out$steps <- q$steps
    }
    out <- c(list(mean = t(q$m), var = t(q$v)), out)
    if (rank > 0L) {
      out$cov_diag <- t(q$D)
      out$cov_factor <- aperm(array(q$V, c(d, rank, nrow(nd$Y))), c(3L, 1L, 2L))
    }
  }
  colnames(out$mean) <- colnames(out$var) <- nms
  if (rank > 0L) colnames(out$cov_diag) <- nms
  out
}

# newdata for the fast path: shape and type here, values checked in C.
amz_as_y <- function(object, newdata, what) {
  N <- ncol(object$data)
  if (is.data.frame(newdata)) newdata <- as.matrix(newdata)
  if (is.null(dim(newdata)) && is.numeric(newdata) && length(newdata) == N) newdata <- matrix(newdata, 1L)
  if (!is.matrix(newdata) || !(is.numeric(newdata) || is.logical(newdata)) || is.complex(newdata))
    stop(sprintf("%s: 'newdata' must be a numeric matrix, trials x units.", what), call. = FALSE)
  if (ncol(newdata) != N)
    stop(sprintf("%s: 'newdata' must have the fit's %d units as columns; it has %d.", what, N, ncol(newdata)),
         call. = FALSE)
  if (!is.double(newdata) && !is.integer(newdata)) storage.mode(newdata) <- "double"
  newdata
}

#' @rdname elbo
#' @param newdata For [vb_amortized()] fits: new trials (a trials x units
#'   matrix); their total ELBO under the trained encoder is returned.
#' @param exposure For [vb_amortized()] fits with `newdata`: its exposure.
#' @param refine For [vb_amortized()] fits: refinement steps per trial before
#'   the ELBO is taken (see [predict.vbamortized()]).
#' @export
elbo.vbamortized <- function(object, newdata = NULL, exposure = NULL, refine = 0, terms = FALSE, ...) {
  if (is.null(newdata) && identical(refine, 0)) return(object$elbo)
  p <- predict.vbamortized(object, newdata = newdata, exposure = exposure, refine = refine, elbo = TRUE)
  if (is.null(newdata)) sum(p$elbo[object$train]) else sum(p$elbo)
}

#' @export
coef.vbamortized <- function(object, ...) object$coefficients

#' @export
print.vbamortized <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  N <- ncol(x$data)
  cat(sprintf("Amortized variational inference (%s decoder, %d units, latent_dim %d)\n", x$decoder, N, x$latent_dim))
  if (!is.null(x$call)) cat("Call: ", paste(deparse(x$call), collapse = "\n"), "\n", sep = "")
  print(x$encoder)
  cat(sprintf("Trials: %d training, %d validation\n", length(x$train), length(x$validation)))
  cat(sprintf("ELBO (training trials) %.3f, %.4f per trial", x$elbo, x$elbo / length(x$train)))
  if (length(x$validation)) cat(sprintf("; validation %.4f per trial", x$elbo_validation / length(x$validation)))
  cat("\n")
  ep <- amz_epochs_text(x)
  cat(if (isTRUE(x$converged)) sprintf("Converged (early stopping) after %s", ep)
      else sprintf("NOT converged after %s (%s)", ep, vb_status_short(x$status)),
      sprintf(", %.3g s\n", x$time), sep = "")
  invisible(x)
}

# Per-trial optimum of the diagonal (and the full) Gaussian family for the
# trials `idx`, by the GLM CAVI engine (poisson: a Poisson GLM in z with
# design C, offset d + log exposure, prior N(0, I)) or in closed form
# (gaussian).  Returns ELBO(q*_diag), ELBO(q*_full) and, gaussian, log p(y_i).
amz_optimum <- function(fit, Y, off, idx, start) {
  p <- fit$params
  d <- fit$latent_dim
  C <- p$C
  if (fit$decoder == "gaussian") {
    psi <- rep_len(p$psi, ncol(Y))
    P <- diag(d) + crossprod(C / psi, C)
    R <- chol(P)
    ldP <- 2 * sum(log(diag(R)))
    Sig <- tcrossprod(C) + diag(psi, length(psi))
    Rs <- chol(Sig)
    Yc <- sweep(Y[idx, , drop = FALSE], 2L, p$d)
    quad <- colSums(backsolve(Rs, t(Yc), transpose = TRUE)^2)
    logev <- -0.5 * (ncol(Y) * log(2 * pi) + 2 * sum(log(diag(Rs))) + quad)
    gap <- 0.5 * (sum(log(diag(P))) - ldP)
    return(data.frame(opt = logev - gap, full = logev, log_evidence = logev))
  }
  colnames(C) <- paste0("z", seq_len(d))
  pa <- list(type = integer(d), location = numeric(d), scale = rep(1, d))
  ctl <- vb_control(maxit = 2000L, tol = 1e-13, quiet = TRUE)
  res <- t(vapply(seq_along(idx), function(k) {
    i <- idx[k]
    mod <- glm_model(C, Y[i, ], rep(1, ncol(Y)), p$d + off[i], stats::poisson(), pa, gamma_prior(1, 1), ctl)
    init <- c(start[, k], 1, 1)
    mf <- .Call(C_glm_cavi, mod, init, seq_len(d) - 1L, ctl)
    fr <- .Call(C_glm_cavi, mod, init, integer(d), ctl)
    c(mf$elbo, fr$elbo, mf$status, fr$status)
  }, numeric(4)))
  if (any(res[, 3:4] != 0))
    warning(sprintf("summary(): per-trial CAVI did not converge on %d trial(s); their gaps are approximate.",
                    sum(rowSums(res[, 3:4, drop = FALSE] != 0) > 0)), call. = FALSE)
  data.frame(opt = res[, 1], full = res[, 2], log_evidence = NA_real_)
}

# IWAE bound with K draws from each trial's q (Burda et al. 2016); q as
# C_amortized_refine returns it (m, v, D, V with trials in columns).
amz_iwae <- function(fit, Y, off, q, K) {
  p <- fit$params
  n <- nrow(Y); d <- fit$latent_dim; rank <- amz_fit_rank(fit)
  psi <- if (!is.null(p$psi)) rep_len(p$psi, ncol(Y))
  vapply(seq_len(n), function(i) {
    m <- q$m[, i]
    # z = m + R'e with Sigma = R'R; log q(z) = sum log phi(e) - log|R|
    R <- if (rank > 0L) {
      V <- matrix(q$V[, i], d, rank)
      chol(diag(q$D[, i], d) + tcrossprod(V))
    } else diag(sqrt(q$v[, i]), d)
    e <- matrix(stats::rnorm(K * d), K)
    z <- sweep(e %*% R, 2L, m, "+")
    eta <- sweep(z %*% t(p$C), 2L, p$d + off[i], "+")
    yi <- matrix(Y[i, ], K, ncol(Y), byrow = TRUE)
    ll <- if (fit$decoder == "poisson") rowSums(stats::dpois(yi, exp(eta), log = TRUE))
          else rowSums(stats::dnorm(yi, eta, rep(sqrt(psi), each = K), log = TRUE))
    lw <- ll + rowSums(stats::dnorm(z, log = TRUE)) - rowSums(stats::dnorm(e, log = TRUE)) + sum(log(diag(R)))
    mx <- max(lw)
    mx + log(mean(exp(lw - mx)))
  }, 0)
}

#' Summarise an amortized fit: training, amortization and approximation gaps
#'
#' For up to `trials` training trials (and as many validation trials, or
#' `newdata`), computes per trial the ELBO of the encoder's q, after
#' `refine` refinement steps, and of the per-trial optimum q*_i of the
#' encoder's family, and the full-covariance optimum.  For the diagonal
#' family q*_i comes from the GLM CAVI engine of [vb_fit()] (poisson: a
#' Poisson GLM in z with design C) or in closed form (gaussian); for the
#' low-rank family from refinement run to convergence.
#' * amortization gap = ELBO(q*_i) - ELBO(q_phi(. | y_i)) (>= 0), before
#'   and after refinement;
#' * approximation gap of the family: for the gaussian decoder log p(y_i) -
#'   ELBO(q*_i) (for the diagonal family the closed form 1/2 (sum log P_kk -
#'   log|P|), P = I + C' diag(1/psi) C; the full Gaussian is the exact
#'   posterior); for poisson ELBO(q*_full) - ELBO(q*_i), the part of the gap
#'   due to the restricted covariance; for low-rank fits
#'   `approximation_gap_diagonal` gives the diagonal family's gap beside it;
#' * the IWAE bound (K draws from the refined q) on log p(y_i), and for the
#'   gaussian decoder the exact log p(y_i).
#' @param object A fit from [vb_amortized()].
#' @param newdata Optional held-out trials (trials x units) to report as well.
#' @param exposure Poisson: the exposure of `newdata`.
#' @param trials At most this many trials of each set are analysed.
#' @param refine Newton steps for the "after refinement" figures.
#' @param K Draws per trial of the IWAE bound (0: skip it).
#' @param ... Unused.
#' @return An object of class `summary.vbamortized` with `gaps` (a data
#'   frame, one row per set: mean per-trial gaps and bounds) and `trials`
#'   (the per-trial figures).
#' @examples
#' set.seed(2)
#' z <- rnorm(200)
#' y <- matrix(rpois(200 * 5, exp(outer(z, rep(0.5, 5)))), 200)
#' fit <- vb_amortized(y, 1, encoder = mlp(hidden = 8),
#'                     control = amortized_control(patience = 3, decays = 1, quiet = TRUE))
#' summary(fit, trials = 20, K = 10)
#' @export
summary.vbamortized <- function(object, newdata = NULL, exposure = NULL, trials = 200, refine = 2,
                                K = 100, ...) {
  trials <- check_count(trials, "trials")
  refine <- check_refine(refine, "summary()")
  if (!is.numeric(K) || length(K) != 1L || !is.finite(K) || K < 0 || K != round(K) || K > 1e5)
    stop("summary(): 'K' must be a whole number of draws between 0 and 100000.", call. = FALSE)
  sets <- list(training = list(Y = object$data, off = object$offset_all, idx = utils::head(object$train, trials)))
  if (length(object$validation))
    sets$validation <- list(Y = object$data, off = object$offset_all, idx = utils::head(object$validation, trials))
  if (!is.null(newdata)) {
    nd <- amz_newdata(object, newdata, exposure, "summary()")
    sets$newdata <- list(Y = nd$Y, off = nd$off, idx = utils::head(seq_len(nrow(nd$Y)), trials))
  }
  per <- lapply(names(sets), function(s) {
    S <- sets[[s]]
    Y <- S$Y[S$idx, , drop = FALSE]; off <- S$off[S$idx]
    ev <- amz_eval(object, Y, off)
    r <- amz_refine(object, Y, off, ev, refine)
    opt <- amz_optimum(object, Y, off, seq_along(S$idx), ev$m)
    # the family's per-trial optimum: CAVI / closed form for the diagonal
    # family; for the low-rank family refinement run to convergence
    fam <- if (amz_fit_rank(object) > 0L) {
      o <- amz_refine(object, Y, off, r, 1000L, tol = 1e-14)
      if (any(!o$status %in% c(0L, 3L)))
        warning(sprintf("summary(): the low-rank optimum was not reached on %d trial(s); their gaps are approximate.",
                        sum(!o$status %in% c(0L, 3L))), call. = FALSE)
      pmax(o$elbo, r$elbo)
    } else opt$opt
    iw <- if (K > 0) amz_iwae(object, Y, off, r, K) else NA_real_
    data.frame(set = s, trial = S$idx, elbo_encoder = ev$elbo, elbo_refined = r$elbo, elbo_optimum = fam,
               elbo_diagonal = opt$opt, elbo_full = opt$full, iwae = iw, log_evidence = opt$log_evidence,
               amortization_gap = fam - ev$elbo, gap_refined = fam - r$elbo,
               approximation_gap = opt$full - fam, approximation_gap_diagonal = opt$full - opt$opt)
  })
  per <- do.call(rbind, per)
  agg <- do.call(rbind, lapply(split(per, factor(per$set, levels = names(sets))), function(p)
    data.frame(set = p$set[1], trials = nrow(p), elbo_encoder = mean(p$elbo_encoder),
               elbo_refined = mean(p$elbo_refined), elbo_optimum = mean(p$elbo_optimum),
               amortization_gap = mean(p$amortization_gap), gap_refined = mean(p$gap_refined),
               approximation_gap = mean(p$approximation_gap),
               approximation_gap_diagonal = mean(p$approximation_gap_diagonal), iwae = mean(p$iwae),
               log_evidence = mean(p$log_evidence))))
  rownames(agg) <- NULL
  structure(list(call = object$call, decoder = object$decoder, latent_dim = object$latent_dim,
                 rank = amz_fit_rank(object),
                 units = ncol(object$data), encoder = object$encoder, elbo = object$elbo,
                 ntrain = length(object$train), nval = length(object$validation),
                 trace = object$trace, converged = object$converged, status = object$status,
                 iterations = object$iterations, epochs = object$epochs, refine = refine, K = K, gaps = agg, trials = per),
            class = "summary.vbamortized")
}

#' @export
print.summary.vbamortized <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat(sprintf("Amortized variational inference (%s decoder, %d units, latent_dim %d)\n", x$decoder, x$units, x$latent_dim))
  print(x$encoder)
  tr <- x$trace
  cat(sprintf("Training: %s, %s; ELBO per trial %.4f (training)", amz_epochs_text(x),
              if (isTRUE(x$converged)) "converged (early stopping)" else paste("NOT converged:", vb_status_short(x$status)),
              x$elbo / x$ntrain))
  if (x$nval) cat(sprintf(", best validation %.4f", max(tr$validation)))
  cat("\n\nPer-trial means (nats):\n")
  g <- x$gaps
  tab <- data.frame(trials = g$trials, `ELBO encoder` = g$elbo_encoder,
                    `ELBO refined` = g$elbo_refined, `ELBO optimum` = g$elbo_optimum,
                    `amort. gap` = g$amortization_gap, `gap refined` = g$gap_refined,
                    `approx. gap` = g$approximation_gap, check.names = FALSE)
  if (isTRUE(x$rank > 0L)) tab[["approx. gap diagonal"]] <- g$approximation_gap_diagonal
  if (x$K > 0) tab[[sprintf("IWAE-%d", x$K)]] <- g$iwae
  if (any(is.finite(g$log_evidence))) tab[["log p(y)"]] <- g$log_evidence
  rownames(tab) <- g$set
  print(tab, digits = digits)
  cat(sprintf("amortization gap = ELBO(q*_i) - ELBO(q_phi(.|y_i)); 'refined' after %d Newton step%s per trial;\n",
              x$refine, if (x$refine == 1) "" else "s"))
  fam <- if (isTRUE(x$rank > 0L)) sprintf("low-rank (rank %d)", x$rank) else "diagonal"
  cat(if (x$decoder == "gaussian") sprintf("approximation gap of the %s family = log p(y_i) - ELBO(q*_i) (exact).\n", fam)
      else sprintf("approximation gap of the %s family: ELBO(full-covariance q*) - ELBO(%s q*).\n", fam, fam))
  invisible(x)
}

#' Plot an amortized fit
#'
#' `which = "elbo"`: mean per-trial ELBO of training and validation trials
#' over epochs; `which = "latent"`: the encoder's posterior means of the
#' fitted trials (the first two latent dimensions against each other, or
#' the one dimension against trial number).
#' @param x A fit from [vb_amortized()].
#' @param which `"elbo"` or `"latent"`.
#' @param ... Passed to [graphics::plot()].
#' @return The plotted data, invisibly.
#' @examples
#' set.seed(1)
#' y <- matrix(rpois(200 * 6, 3), 200)
#' fit <- vb_amortized(y, 1, encoder = mlp(hidden = 8),
#'                     control = amortized_control(patience = 3, decays = 1, quiet = TRUE))
#' plot(fit)
#' @export
plot.vbamortized <- function(x, which = c("elbo", "latent"), ...) {
  which <- match.arg(which)
  if (which == "elbo") {
    tr <- x$trace
    yl <- range(c(tr$train, tr$validation), finite = TRUE)
    plot(tr$epoch, tr$train, type = "l", ylim = yl, xlab = "epoch", ylab = "ELBO per trial",
         main = "Training curve", ...)
    if (length(x$validation)) {
      lines(tr$epoch, tr$validation, lty = 2, col = 2)
      legend("bottomright", c("training", "validation"), lty = 1:2, col = 1:2, bty = "n")
    }
    return(invisible(tr))
  }
  m <- x$posterior$mean
  if (ncol(m) >= 2L) {
    plot(m[, 1], m[, 2], pch = 20, col = ifelse(seq_len(nrow(m)) %in% x$validation, 2, 1),
         xlab = "z1 (posterior mean)", ylab = "z2 (posterior mean)", main = "Latent factors per trial", ...)
    if (length(x$validation))
      legend("topright", c("training", "validation"), pch = 20, col = 1:2, bg = "white")
    return(invisible(data.frame(trial = seq_len(nrow(m)), z1 = m[, 1], z2 = m[, 2])))
  }
  sd <- sqrt(x$posterior$var[, 1])
  plot(seq_len(nrow(m)), m[, 1], pch = 20, xlab = "trial", ylab = "z1 (posterior mean)",
       main = "Latent factor per trial", ...)
  segments(seq_len(nrow(m)), m[, 1] - 2 * sd, seq_len(nrow(m)), m[, 1] + 2 * sd, col = "grey")
  invisible(data.frame(trial = seq_len(nrow(m)), z1 = m[, 1], sd = sd))
}

#' @export
q_sample.vbamortized <- function(fit, S) {
  stop("vb_diagnose(): not available for vb_amortized() fits, whose q is one Gaussian per trial; summary() reports an IWAE bound per trial instead.",
       call. = FALSE)
}
