//! The per-pixel argmax over the channels of an `N×C×H×W` slice: the prediction step of
//! segmentation (class scores to class ids). The first maximum wins, as candle's and PyTorch's
//! `argmax` give it.

use rayon::prelude::*;

/// Pixels per parallel task.
const CHUNK: usize = 1 << 14;

/// For every image and pixel, the index of the largest of its `c` channel values (`x` holds
/// `n·c·hw` values, channels apart by `hw`); `n·hw` ids.
pub fn channels(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<u32> {
    assert_eq!(x.len(), n * c * hw, "input and shape disagree");
    assert!(c > 0 && c <= u32::MAX as usize, "argmax over {c} channels");
    let mut ids = vec![0u32; n * hw];
    if ids.is_empty() {
        return ids;
    }
    ids.par_chunks_mut(hw).zip(x.par_chunks(c * hw)).for_each(|(ids, img)| {
        ids.par_chunks_mut(CHUNK).enumerate().for_each(|(k, ids)| {
            let p0 = k * CHUNK;
            let mut best: Vec<f32> = img[p0..p0 + ids.len()].to_vec();
            for ch in 1..c {
                let row = &img[ch * hw + p0..ch * hw + p0 + ids.len()];
                for ((b, id), &v) in best.iter_mut().zip(ids.iter_mut()).zip(row) {
                    if v > *b {
                        *b = v;
                        *id = ch as u32;
                    }
                }
            }
        });
    });
    ids
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_first_maximum_of_each_pixel_wins() {
        // 2 images, 3 channels, 2 pixels; ties go to the lower channel.
        let x = [
            1.0, 5.0, /* c1 */ 3.0, 5.0, /* c2 */ 2.0, -1.0, // image 0
            0.0, 0.0, /* c1 */ 0.0, 7.0, /* c2 */ 9.0, 7.0, // image 1
        ];
        assert_eq!(super::channels(&x, 2, 3, 2), vec![1, 0, 2, 1]);
    }

    #[test]
    fn agrees_with_a_direct_loop_across_chunks() {
        let (n, c, hw) = (2, 5, super::CHUNK + 37);
        let mut s = 7u64;
        let x: Vec<f32> = (0..n * c * hw)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) % 16) as f32
            })
            .collect();
        let ids = super::channels(&x, n, c, hw);
        for i in 0..n {
            for p in 0..hw {
                let v = |ch: usize| x[(i * c + ch) * hw + p];
                let want = (1..c).fold(0, |b, ch| if v(ch) > v(b) { ch } else { b });
                assert_eq!(ids[i * hw + p] as usize, want);
            }
        }
    }
}
