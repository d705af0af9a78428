#' A small simulated population of coupled neurons
#'
#' Three neurons recorded together for 5 trials of 10 s, binned at 5 ms
#' (10,000 bins), sharing one stimulus.  Each neuron's rate is
#' baseline_hz\[j\] * exp(stim_gain\[j\] * stim + sum_i (filter from i to j) *
#' (past spikes of i)), with filters over lags of 1-20 bins (100 ms):
#' every neuron has the refractory self-filter -3 exp(-(lag - 1)/2);
#' neuron 1 excites neuron 2 (1.2 exp(-(lag - 4)^2 / 8), a bump at 20 ms);
#' neuron 2 inhibits neuron 3 (-1.5 exp(-(lag - 5)^2 / 18)); no other
#' coupling.  Baselines are 25, 15 and 30 Hz and stimulus gains 0.8, 0.2 and
#' -0.4.  Made by `data-raw/population.R`; the ground truth is in
#' `attr(population, "truth")` (`filters[lag, from, to]`).
#'
#' @format A data frame with 10,000 rows:
#' \describe{
#'   \item{trial}{trial number, 1-5}
#'   \item{time}{start of the bin within its trial, in seconds}
#'   \item{stim}{the stimulus, a standardised smooth (AR(1), coefficient 0.95) signal}
#'   \item{n1, n2, n3}{spike counts of the three neurons in the bin}
#' }
#' @seealso [neuron] for a single neuron; [spike_history()] for coupling terms.
#' @examples
#' colSums(population[, c("n1", "n2", "n3")])
#' attr(population, "truth")$filters[1:6, "n1", "n2"]   # excitation of n2 by n1
"population"
